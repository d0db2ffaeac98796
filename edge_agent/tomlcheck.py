"""Checking TOML data against a schema, with one-line errors that say where.

Shared by the agent's configuration and the HIL bench's scenario files: every mistake is one
error naming the file, the line (where it can be found), the key path and what is wrong, e.g.
``agent.toml:42: tags[3].address: must be an integer in 0..65535, got -1``.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import MISSING, fields
from typing import Any

KeyPath = tuple[str | int, ...]


class TomlChecker:
    """Generic checks on parsed TOML; `fail` builds the error, the caller raises it."""

    def __init__(self, source: str, text: str, error: type[ValueError]):
        self.source = source
        self.text = text
        self.lines = KeyLines(text)
        self.error = error

    def parse(self) -> dict:
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise self.error(f"{self.source}: invalid TOML: {exc}") from None

    def fail(self, path: KeyPath, message: str) -> ValueError:
        line = self.lines.line_of(path)
        where = f"{self.source}:{line}" if line else self.source
        return self.error(f"{where}: {dotted(path)}: {message}")

    def table(self, data: Any, path: KeyPath, allowed: set[str] | tuple[str, ...]) -> dict:
        if not isinstance(data, dict):
            raise self.fail(path, f"must be a table, got {kind_name(data)}")
        for key in data:
            if key not in allowed:
                raise self.fail(
                    (*path, key), f"unknown key (allowed: {', '.join(sorted(allowed))})"
                )
        return data

    def value(self, data: dict, path: KeyPath, key: str, kind: type, default: Any = ...) -> Any:
        if key not in data:
            if default is ...:
                raise self.fail((*path, key), "missing")
            return default
        value = data[key]
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail((*path, key), f"must be {KIND_NAMES[kind]}, got {kind_name(value)}")
        if kind is float and not math.isfinite(value):
            raise self.fail((*path, key), f"must be a finite number, got {value}")
        return value

    def int_in(self, data, path, key, lo, hi, default: Any = ...) -> int:
        value = self.value(data, path, key, int, default)
        if not lo <= value <= hi:
            raise self.fail((*path, key), f"must be an integer in {lo}..{hi}, got {value}")
        return value

    def positive(self, data, path, key, default: Any = ...) -> float:
        value = self.value(data, path, key, float, default)
        if value <= 0:
            raise self.fail((*path, key), f"must be greater than 0, got {value}")
        return value

    def choice(self, data, path, key, choices, default: Any = ...) -> str:
        value = self.value(data, path, key, str, default)
        if value not in choices:
            raise self.fail((*path, key), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def section(self, data: dict, name: str, cls: type, required: bool = False) -> Any:
        """Validate a flat section against the dataclass `cls`: its fields, their types (str,
        int, float, bool, or a tuple of int or str, written as an array) and defaults."""
        if name not in data:
            if required:
                raise self.fail((name,), "missing section")
            return cls()
        raw = self.table(data[name], (name,), [f.name for f in fields(cls)])
        values = {}
        for f in fields(cls):
            default = ... if f.default is MISSING else f.default
            if f.type in _TUPLES:
                default = list(default) if default is not ... else ...
                items = self.value(raw, (name,), f.name, list, default)
                kind = _TUPLES[f.type]
                for i, item in enumerate(items):
                    if not isinstance(item, kind) or isinstance(item, bool):
                        raise self.fail(
                            (name, f.name, i), f"must be {KIND_NAMES[kind]}, got {kind_name(item)}"
                        )
                values[f.name] = tuple(items)
            else:
                values[f.name] = self.value(raw, (name,), f.name, _KINDS[f.type], default)
        return cls(**values)


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}
_TUPLES = {"tuple[int, ...]": int, "tuple[str, ...]": str}


class KeyLines:
    """Finds the line of a key path in TOML text, so errors can say where.

    A line-by-line reading of headers (`[a.b]`, `[[a]]`) and `key =` lines: enough for
    the files people write, without a second TOML parser.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\"'-]+)\s*=")

    def __init__(self, text: str):
        self.lines: dict[KeyPath, int] = {}
        counts: dict[KeyPath, int] = {}
        table: KeyPath = ()
        for number, line in enumerate(text.splitlines(), start=1):
            if header := self._HEADER.match(line):
                path = tuple(split_key(header.group(2)))
                if header.group(1) == "[[":
                    counts[path] = counts.get(path, -1) + 1
                    path = (*path, counts[path])
                table = path
                self.lines.setdefault(table, number)
            elif key := self._KEY.match(line):
                self.lines.setdefault((*table, *split_key(key.group(1))), number)

    def line_of(self, path: KeyPath) -> int | None:
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def split_key(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


KIND_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


def kind_name(value: Any) -> str:
    for kind, name in KIND_NAMES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return name if kind is not float else "a number"
    return type(value).__name__
