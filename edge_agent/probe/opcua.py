"""`edge-agent probe` of an OPC UA server: every node found as the agent finds it, read once.

Two parts:

- sans-IO: `node_row()` turns one node's DataValue (its Variant, StatusCode and source
  timestamp, as plain values) into a row, with the quality the agent would give it
  (`sources/opcua.reading`); `missing_row()` says why a node was not found.
- `OpcUaProbe`, the shell: a client made as the agent makes it (`sources/opcua.make_client`:
  security, certificates, user), the server's identity, namespaces, node ids, browse paths
  and types resolved by the OPC UA source's own code, then one Read of every node a round.

Never writes: no Write request is ever sent, the override node is read like the others.
asyncua is imported only when an OPC UA server is probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import datetime

from ..clock import SystemClock
from ..sources.opcua import CONNECT_TIMEOUTS, OpcUaSource, classify, make_client, reading
from ..sources.opcua_config import OpcUaConfig, OpcUaNode
from .report import GOOD, Report, bad, number, with_unit

COLUMNS = ("node", "type", "value", "quality", "status", "source time (UTC)", "control", "node id")
#: A String value longer than this is cut: a row stays one line.
MAX_TEXT = 40


# -- sans-IO --------------------------------------------------------------------------------


def value_text(variant: str, value) -> str:
    """A node's value as the server sent it: a Float with the 7 digits it holds, a Double
    with 15, a String in quotes (cut at MAX_TEXT), an array by its length."""
    if value is None:
        return "(no value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number(value, 7 if variant == "Float" else 15)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return f"array of {len(value)}"
    text = str(value)
    text = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."
    return f'"{text}"' if isinstance(value, str) else text


def stamp_text(stamp: datetime | None) -> str:
    """A source timestamp (UTC) to the millisecond; "-" when the server sent none."""
    if stamp is None:
        return "-"
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def node_address(node: OpcUaNode, resolved_id: str = "") -> str:
    """The node id the server gave the node (a browse path's, or the configured id with its
    namespace URI as an index); what the configuration says when it was not found."""
    return resolved_id or node.node_id or node.browse_path


def node_row(
    node: OpcUaNode,
    resolved_id: str,
    variant: str,
    value,
    status: int,
    status_name: str,
    source_time: datetime | None,
    role: str = "",
) -> tuple[tuple[str, ...], bool]:
    """One node's row under `COLUMNS` and whether the agent would read it GOOD."""
    is_array = isinstance(value, list | tuple)
    _, fault = reading(status, variant, value, is_array)
    shown = value_text(variant, value)
    if not fault:
        shown = with_unit(shown, node.unit)
    return (
        node.name,
        variant,
        shown,
        bad(fault) if fault else GOOD,
        status_name,
        stamp_text(source_time),
        role,
        node_address(node, resolved_id),
    ), not fault


def missing_row(node: OpcUaNode, why: str, role: str = "") -> tuple[str, ...]:
    """The row of a node the server does not have (or has with another type)."""
    return (node.name, node.type, "", bad(f"not found: {why}"), "", "", role, node_address(node))


# -- the shell ------------------------------------------------------------------------------


def _read(ua, ids: dict, nodes: list[OpcUaNode]):
    """A Read of the nodes' values now (MaxAge 0: from the device, not a cache), each with its
    source timestamp."""
    return ua.ReadParameters(
        MaxAge=0,
        TimestampsToReturn=ua.TimestampsToReturn.Source,
        NodesToRead=[ua.ReadValueId(ids[n.name], ua.AttributeIds.Value) for n in nodes],
    )


class OpcUaProbe:
    """One OPC UA server: a session for as long as the probe runs, a Read a group a round."""

    def __init__(self, cfg: OpcUaConfig, roles: dict[str, str]):
        self.cfg = cfg
        self.roles = roles
        self._client = None
        self._opened = False
        # The source resolves the nodes (its `prepare`): the probe finds exactly what the
        # agent would, by the same code; it is never run, so it never reads or writes.
        self._source: OpcUaSource | None = None

    @property
    def title(self) -> str:
        return f"opcua {self.cfg.url} (security {self.cfg.security})"

    async def round(self) -> Report:
        from asyncua import ua

        if self._client is None:
            error = await self._connect()
            if error:
                return Report(self.title, error=error)
        source = self._source
        ids = source.node_ids()
        found = [n for n in self.cfg.nodes if n.name in ids]
        by_name = {}
        try:
            for group in sorted(self.cfg.groups):  # one Read a group, as the agent reads
                nodes = [n for n in found if n.group == group]
                if nodes:
                    results = await self._client.uaclient.read(_read(ua, ids, nodes))
                    by_name.update(zip((n.name for n in nodes), results, strict=True))
        except Exception as exc:  # the server's faults: one line, a new session next round
            kind, detail = classify(exc)
            await self._close()
            return Report(self.title, error=f"opcua {self.cfg.url}: read failed: {kind} ({detail})")
        identity = " ".join(source.identity.values()) if source.identity else "the server"
        report = Report(
            f"opcua {self.cfg.url} ({identity}, security {self.cfg.security}): "
            f"{len(found)} of {len(self.cfg.nodes)} nodes found",
            COLUMNS,
        )
        for node in self.cfg.nodes:
            role = self.roles.get(node.name, "")
            datavalue = by_name.get(node.name)
            if datavalue is None:
                state = source.groups[node.group].state[node.name]
                report.rows.append(missing_row(node, state.detail or "unresolved", role))
                report.failed += 1
                continue
            variant, status = datavalue.Value, datavalue.StatusCode
            row, good = node_row(
                node,
                ids[node.name].to_string(),
                variant.VariantType.name if variant is not None else "Null",
                variant.Value if variant is not None else None,
                status.value if status is not None else 0,
                status.name if status is not None else "Good",
                datavalue.SourceTimestamp,
                role,
            )
            report.rows.append(row)
            report.failed += not good
        return report

    async def _connect(self) -> str:
        """A session with the nodes resolved; "" or the one line saying why not."""
        where = f"opcua {self.cfg.url}"
        try:
            client = await make_client(self.cfg)
        except (OSError, ValueError) as exc:  # a certificate, key or user file
            return f"{where}: cannot connect: client_setup ({exc}); nothing read"
        self._client = client
        self._source = OpcUaSource(self.cfg, SystemClock(), lambda samples: None)
        bound_s = CONNECT_TIMEOUTS * self.cfg.timeout_s
        try:
            async with asyncio.timeout(bound_s):
                await client.connect()
                self._opened = True
                await self._source.prepare(client)
        except Exception as exc:  # refused, unreachable, security, a server fault
            kind, detail = classify(exc)
            await self._close()
            if isinstance(exc, OSError) and exc.errno:
                detail = os.strerror(exc.errno)  # "Connection refused", not asyncio's words
            if kind == "timeout":
                detail = f"no answer within {bound_s:g} s"
            return f"{where}: cannot connect: {kind} ({detail}); nothing read"
        return ""

    async def _close(self) -> None:
        client, self._client = self._client, None
        opened, self._opened = self._opened, False
        if client is None:
            return
        if not opened:  # a connect that failed: its socket only
            client.disconnect_socket()
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.cfg.timeout_s):
                await client.disconnect()  # frees the session: a controller has few

    async def close(self) -> None:
        await self._close()
