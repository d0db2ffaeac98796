"""Turns register-map tags into fields for the register-decoding kernel.

Pure and small: builds a `BlockDecoder` once per planned read, never decodes a reply
itself and never does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..kernels.regdecode import BlockDecoder
from ..registers import Order, Tag, ValueType

Field = tuple[int, int, bool, bool, int, int, float, float]


def fields_for(tags: Iterable[Tag], base_address: int) -> list[Field]:
    """One kernel field per tag, offsets relative to the read's first address.

    In a coil or discrete table the reply holds one bit per address as 0/1, so every
    tag there is decoded as `bool`, whatever its declared type.
    """
    fields = []
    for tag in tags:
        value_type = ValueType.BOOL if tag.table.is_bits else tag.type
        fields.append(
            (
                tag.address - base_address,
                value_type.code,
                tag.byte_order is Order.LITTLE,
                tag.word_order is Order.LITTLE,
                tag.bit,
                tag.width,
                float(tag.scale),
                float(tag.offset),
            )
        )
    return fields


def make_decoder(tags: Iterable[Tag], base_address: int) -> BlockDecoder:
    """A decoder for one read of `tags` starting at `base_address`."""
    return BlockDecoder(fields_for(tags, base_address))
