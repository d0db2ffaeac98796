"""`edge-agent teach profiles | show | forget`: the learned profiles of the preview and each
one's last part, read from their folder beside the teach file (`profile_store.py`), for a
person, or as CSV for a spreadsheet or another machine."""

from __future__ import annotations

import array
import bisect
import math
import statistics
import sys
from pathlib import Path

from ..config import ControlConfig
from ..durable import replace_atomically
from .profile import Profile
from .profile_store import ProfileError, ProfileStore, profile_dir


def profile_command(args, control: ControlConfig) -> int:
    store = ProfileStore(profile_dir(control.teach_file))
    if args.action == "forget":
        if not store.remove(args.program, args.tool):
            print(
                f"edge-agent: no profile of program {args.program}, tool {args.tool} "
                f"({store.directory})",
                file=sys.stderr,
            )
            return 1
        print(
            f"program {args.program}, tool {args.tool} forgotten with its last part: its next "
            f"part teaches it again (a running agent keeps it until it restarts)"
        )
        return 0
    profiles, lag, errors = store.load()
    for error in errors:
        print(f"edge-agent: {error}", file=sys.stderr)
    if args.action == "profiles":
        if not profiles:
            print(f"no profiles learned yet ({store.directory})")
        else:
            print(
                f"{'program':>8} {'tool':>5} {'parts':>5} {'path mm':>8} {'blocks':>6} "
                f"{'k min':>6} {'k median':>8} {'k max':>6}"
            )
            for _, profile in sorted(profiles.items()):
                print(_line(profile))
        if not control.preview:
            print("([control] preview is off: these profiles are not in use)")
        return 1 if errors else 0
    profile = profiles.get((args.program, args.tool))
    if profile is None:
        print(
            f"edge-agent: no profile of program {args.program}, tool {args.tool} "
            f"({store.directory})",
            file=sys.stderr,
        )
        return 1
    print(_line(profile))
    print(
        f"axes' lag {lag or 0.0:.3f} s; blocks: "
        + ", ".join(f"{v.block} ({v.length_mm:.1f} mm)" for v in profile.visits)
    )
    last, failed = None, False
    try:
        last = store.last_part(args.program, args.tool)
    except ProfileError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        failed = True
    else:
        print(_last_line(last) if last else "no last part kept yet (the agent keeps the next)")
    if args.png:
        _plot(profile, args.png, last)
        print(f"plot: {args.png}")
    if args.csv:
        _write_csv(profile, args.csv)
        print(
            f"{args.csv}: the profile's {len(profile.k)} bins of {profile.bin_mm:g} mm "
            "(s_mm: the bin's middle, k_pct, block)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _cut(profile: Profile) -> list[float]:
    return [k for k in profile.k if math.isfinite(k) and k > 0]


def _line(profile: Profile) -> str:
    """One profile: program, tool, parts, path, blocks, k in its cuts (% per 100 % feed)."""
    cut = _cut(profile) or [0.0]
    return (
        f"{profile.program:>8} {profile.tool:>5} {profile.parts:>5} "
        f"{len(profile.k) * profile.bin_mm:>8.0f} {len(profile.visits):>6} "
        f"{min(cut):>6.1f} {statistics.median(cut):>8.1f} {max(cut):>6.1f}"
    )


def _last_line(last: dict[str, array.array]) -> str:
    t = last["t_s"]
    peak = max(filter(math.isfinite, last["load_pct"]), default=math.nan)
    return (
        f"last part: {len(t)} readings, {t[0]:.1f}-{t[-1]:.1f} s into its cycle, "
        f"peak load {peak:.1f} %"
    )


def _write_csv(profile: Profile, path: str) -> None:
    """One row per bin: its middle along the path, k there (empty where the tool never cut),
    the block it lies in."""
    starts = [v.start_mm for v in profile.visits]
    lines = ["s_mm,k_pct,block"]
    for i, k in enumerate(profile.k):
        s_mm = (i + 0.5) * profile.bin_mm
        at = bisect.bisect_right(starts, s_mm) - 1
        block = profile.visits[max(0, at)].block if starts else ""
        lines.append(f"{round(s_mm, 3)},{f'{k:.3f}' if math.isfinite(k) else ''},{block}")
    try:
        replace_atomically(Path(path), "\n".join(lines) + "\n")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _plot(profile: Profile, path: str, last: dict[str, array.array] | None) -> None:
    """k along the path, and below it the last part's load, target and override if one is
    kept; the block boundaries marked (matplotlib, imported only here)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ProfileError(
            "--png needs matplotlib (Debian: apt install python3-matplotlib; "
            "pip: pip install 'edge-agent[plot]')"
        ) from None
    s = [(i + 0.5) * profile.bin_mm for i in range(len(profile.k))]
    rows = 1 if last is None else 2
    fig, axes = plt.subplots(
        rows, 1, figsize=(10, 4 * rows), sharex=True, squeeze=False, layout="constrained"
    )
    ax = axes[0, 0]
    ax.plot(s, list(profile.k), lw=1)
    ax.set_ylabel("k, % load per 100 % feed")
    ax.set_title(f"program {profile.program}, tool {profile.tool}: {profile.parts} parts learned")
    if last is not None:
        _plot_last(axes[1, 0], last)
    for row in axes[:, 0]:
        for visit in profile.visits:
            row.axvline(visit.start_mm, color="0.8", lw=0.5)
    axes[-1, 0].set_xlabel("path, mm")
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _plot_last(ax, last: dict[str, array.array]) -> None:
    """The last part where the tool was at each reading: the load shows a sensor's delay
    after the place that caused it, where k is put back."""
    s = list(last["s_mm"])
    lines = ax.plot(s, list(last["load_pct"]), lw=0.8, label="load")
    lines += ax.plot(s, list(last["target_pct"]), lw=1, ls="--", color="C3", label="target")
    ax.set_ylabel("load, %")
    ax.set_title("last part, as read (the load a sensor's delay behind the path)")
    override = ax.twinx()
    lines += override.plot(s, list(last["override_pct"]), lw=0.8, color="C2", label="override")
    override.set_ylabel("override, %")
    ax.legend(handles=lines, loc="upper right")
