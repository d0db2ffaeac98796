"""`edge-agent teach profiles | show | forget`: the learned profiles of the preview, read from
their folder beside the teach file (`profile_store.py`), for a person."""

from __future__ import annotations

import math
import statistics
import sys

from ..config import ControlConfig
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
            f"program {args.program}, tool {args.tool} forgotten: its next part teaches it "
            f"again (a running agent keeps it until it restarts)"
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
    if args.png:
        _plot(profile, args.png)
        print(f"plot: {args.png}")
    return 0


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


def _plot(profile: Profile, path: str) -> None:
    """k along the path, the block boundaries marked (matplotlib, imported only here)."""
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
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(s, list(profile.k), lw=1)
    for visit in profile.visits:
        ax.axvline(visit.start_mm, color="0.8", lw=0.5)
    ax.set_xlabel("path, mm")
    ax.set_ylabel("k, % load per 100 % feed")
    ax.set_title(f"program {profile.program}, tool {profile.tool}: {profile.parts} parts learned")
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
