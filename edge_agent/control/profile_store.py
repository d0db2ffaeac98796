"""The learned profiles on disk: one JSON file per (program, tool) in `profiles/` beside the
teach file, written atomically (`durable.py`), so an agent restarted previews its parts at
once rather than learning them again. A file that cannot be read is one line naming it and
why, and is left alone for the operator; the others load.

Format (version 1): {"version", "program", "tool", "parts", "bin_mm", "axes_lag_s",
"learned_at", "visits": [[block, start_mm, length_mm, step_mm], ...], "k": [k or null, ...]},
k in % load per 100 % feed, null where the tool never cut.

Beside each, `program-P-tool-T.last-part.csv`: the last finished part's readings with that tool
(learned from or not), for `teach show`'s plot. A plain CSV with a header row (`LAST_PART`),
an empty cell where a value was not known.
"""

from __future__ import annotations

import array
import json
import math
from datetime import UTC, datetime
from pathlib import Path

from ..durable import replace_atomically
from .part import PartRecord
from .path import Visit
from .profile import Profile

VERSION = 1

#: The last part's columns (`part.py`'s names) and the decimals each is written with: a
#: millisecond, a micrometre, a hundredth of a percent.
LAST_PART = (
    ("t_s", 3),
    ("s_mm", 3),
    ("load_pct", 2),
    ("override_pct", 2),
    ("target_pct", 2),
    ("feed_pct", 2),
    ("cutting", 0),
)


class ProfileError(ValueError):
    """A profile file that cannot be read or written, as one line."""


def profile_dir(teach_file: str) -> Path:
    """Where the profiles live: `profiles/` beside the teach file."""
    return Path(teach_file).parent / "profiles"


class ProfileStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, program: int, tool: int) -> Path:
        return self.directory / f"program-{program}-tool-{tool}.json"

    def last_part_path(self, program: int, tool: int) -> Path:
        return self.directory / f"program-{program}-tool-{tool}.last-part.csv"

    def save(self, profile: Profile, axes_lag_s: float) -> None:
        data = {
            "version": VERSION,
            "program": profile.program,
            "tool": profile.tool,
            "parts": profile.parts,
            "bin_mm": profile.bin_mm,
            "axes_lag_s": round(axes_lag_s, 4),
            "learned_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "visits": [[v.block, v.start_mm, v.length_mm, v.step_mm] for v in profile.visits],
            "k": [round(k, 3) if math.isfinite(k) else None for k in profile.k],
        }
        path = self.path(profile.program, profile.tool)
        try:
            replace_atomically(path, json.dumps(data, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot save: {exc.strerror or exc}") from None

    def load(self) -> tuple[dict[tuple[int, int], Profile], float | None, list[str]]:
        """Every profile that reads, the axes' lag they were last learned with (None: none),
        and one line for each file that does not."""
        profiles: dict[tuple[int, int], Profile] = {}
        lags: list[tuple[str, float]] = []
        errors = []
        for path in sorted(self.directory.glob("program-*-tool-*.json")):
            try:
                profile, learned_at, lag = _read(path)
            except ProfileError as exc:
                errors.append(str(exc))
                continue
            profiles[(profile.program, profile.tool)] = profile
            lags.append((learned_at, lag))
        return profiles, (max(lags)[1] if lags else None), errors

    def remove(self, program: int, tool: int) -> bool:
        """Forget one profile and its last part: its next part teaches it again. False if
        there was neither."""
        removed = False
        for path in (self.path(program, tool), self.last_part_path(program, tool)):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ProfileError(f"{path}: {exc.strerror or exc}") from None
            removed = True
        return removed

    def save_last_part(self, record: PartRecord, tool: int) -> None:
        """The record's readings with `tool`, replacing the part before's."""
        r = record.readings
        lines = [",".join(name for name, _ in LAST_PART)]
        lines += (
            ",".join(_cell(r[name][i], places) for name, places in LAST_PART)
            for i, used in enumerate(r["tool"])
            if used == tool
        )
        path = self.last_part_path(record.program, tool)
        try:
            replace_atomically(path, "\n".join(lines) + "\n")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot save: {exc.strerror or exc}") from None

    def last_part(self, program: int, tool: int) -> dict[str, array.array] | None:
        """The last part's readings with the tool, column by column (NaN where not known);
        None if none is kept."""
        path = self.last_part_path(program, tool)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{path}: cannot read: {exc}") from None
        names = [name for name, _ in LAST_PART]
        if not lines or lines[0].split(",") != names:
            raise ProfileError(f"{path}: not a last part: its header is not {','.join(names)}")
        if len(lines) < 2:
            raise ProfileError(f"{path}: not a last part: no readings")
        columns = {name: array.array("d") for name in names}
        for number, line in enumerate(lines[1:], start=2):
            cells = line.split(",")
            if len(cells) != len(names):
                raise ProfileError(
                    f"{path}: not a last part: line {number} has {len(cells)} cells, not "
                    f"{len(names)}"
                )
            try:
                for name, cell in zip(names, cells, strict=True):
                    columns[name].append(float(cell) if cell else math.nan)
            except ValueError as exc:
                raise ProfileError(f"{path}: not a last part: line {number}: {exc}") from None
        return columns


def _cell(value: float, places: int) -> str:
    return f"{value:.{places}f}" if math.isfinite(value) else ""


def _read(path: Path) -> tuple[Profile, str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    try:
        if data["version"] != VERSION:
            raise ProfileError(f"{path}: version {data['version']!r}, this agent reads {VERSION}")
        visits = tuple(
            Visit(int(b), float(s), float(n), float(st)) for b, s, n, st in data["visits"]
        )
        k = array.array("d", (math.nan if x is None else float(x) for x in data["k"]))
        profile = Profile(
            int(data["program"]),
            int(data["tool"]),
            visits,
            k,
            int(data["parts"]),
            float(data["bin_mm"]),
        )
        if not profile.bin_mm > 0 or profile.parts < 1:
            raise ValueError("bin_mm and parts must be positive")
        return profile, str(data["learned_at"]), float(data["axes_lag_s"])
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{path}: not a profile: {type(exc).__name__}: {exc}") from None
