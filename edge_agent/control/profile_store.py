"""The learned profiles on disk: one JSON file per (program, tool) in `profiles/` beside the
teach file, written atomically (`durable.py`), so an agent restarted previews its parts at
once rather than learning them again. A file that cannot be read is one line naming it and
why, and is left alone for the operator; the others load.

Format (version 1): {"version", "program", "tool", "parts", "bin_mm", "axes_lag_s",
"learned_at", "visits": [[block, start_mm, length_mm, step_mm], ...], "k": [k or null, ...]},
k in % load per 100 % feed, null where the tool never cut.
"""

from __future__ import annotations

import array
import json
import math
from datetime import UTC, datetime
from pathlib import Path

from ..durable import replace_atomically
from .path import Visit
from .profile import Profile

VERSION = 1


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
        """Forget one profile: its next part teaches it again. False if there was none."""
        try:
            self.path(program, tool).unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ProfileError(f"{self.path(program, tool)}: {exc.strerror or exc}") from None
        return True


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
