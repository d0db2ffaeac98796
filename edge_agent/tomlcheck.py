"""Checking TOML data against a schema, with one-line errors that say where.

Shared by the agent's configuration and the HIL bench's scenario files: every mistake is one
error naming the file, the line (where it can be found), the key path and what is wrong, e.g.
``agent.toml:42: tags[3].address: must be an integer in 0..65535, got -1``.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from . import names

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Range:
    """The values a numeric key admits, and why: `lo..hi` (both included), its magnitude in
    it when `signed` (a scale may be negative, never 0), and 0 too when `zero` says what 0
    means ("off")."""

    lo: float
    hi: float
    why: str
    zero: str = ""
    integer: bool = False
    signed: bool = False

    def admits(self, value: float) -> bool:
        if self.zero and value == 0:
            return True
        return self.lo <= (abs(value) if self.signed else value) <= self.hi

    def text(self) -> str:
        """What the range admits, as the example config documents it: `0.001..3600`,
        `0 (off) or 0.01..60`, `+-1e-09..1e+09`."""
        span = f"{number_text(self.lo)}..{number_text(self.hi)}"
        span = f"+-{span}" if self.signed else span
        return f"0 ({self.zero}) or {span}" if self.zero else span

    def rule(self) -> str:
        """The error's "must be ..." part."""
        kind = "an integer" if self.integer else "a number"
        span = self.text()
        if self.zero:
            return span.replace(" or ", f" or {kind} in ", 1)
        return f"{kind} in {span}"


def number_text(value: float) -> str:
    """A bound as a person writes it: 0.001, 3600, 31622400, 1e-9, 1e9, 2147483648."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e8):
        return str(int(value))
    short = f"{value:g}"
    short = short if float(short) == value else repr(value)
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", short)


def read_toml_text(path, error: type[ValueError]) -> str:
    """A TOML file's text, or `error` as one line: unreadable, or not UTF-8 (TOML's encoding;
    the line and byte say where)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); TOML files are UTF-8"
        ) from None


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

    def private_file(self, path: KeyPath, name: str) -> None:
        """A secret (password, private key) must exist and not be readable by others."""
        try:
            mode = os.stat(name).st_mode
        except OSError as exc:
            raise self.fail(path, f"{name}: {exc.strerror}") from None
        if mode & 0o007:
            raise self.fail(
                path,
                f"{name} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                "chmod o-rwx it (0600, or 0640 with the agent's group)",
            )

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

    def within(self, data, path, key, allowed: Range, default: Any = ...) -> float:
        """A number (an integer when the range says so) that the range admits."""
        value = self.value(data, path, key, int if allowed.integer else float, default)
        self.admitted((*path, key), value, allowed)
        return value

    def admitted(self, path: KeyPath, value: float, allowed: Range) -> None:
        if not allowed.admits(value):
            raise self.fail(path, f"must be {allowed.rule()}, got {value!r} ({allowed.why})")

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

    def ranges(self, cfg: Any, path: KeyPath, table: dict[str, Range]) -> None:
        """Each numeric key of a section (already typed) in its range; an array's items each."""
        for key, allowed in table.items():
            value = getattr(cfg, key)
            if isinstance(value, tuple):
                for i, item in enumerate(value):
                    self.admitted((*path, key, i), item, allowed)
            else:
                self.admitted((*path, key), value, allowed)

    def reconnect_bounds(self, cfg: Any, path: KeyPath) -> None:
        """A reconnect backoff's cap may not be under its start."""
        if cfg.reconnect_max_s < cfg.reconnect_min_s:
            raise self.fail((*path, "reconnect_max_s"), "must not be less than reconnect_min_s")

    def channel_name(self, path: KeyPath, name: str, group: bool = False) -> str:
        """`name` as a channel (or, `group`, a time group) may be named (`names.CHANNEL`), or
        the one-line error at `path`."""
        if not names.CHANNEL.match(name):
            if group:
                raise self.fail(path, "group name must be lower-case letters, digits and '_'")
            raise self.fail(path, f"must start with {names.CHANNEL_RULE}, got {name!r}")
        return name

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
