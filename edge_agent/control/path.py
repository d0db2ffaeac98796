"""Where the tool is along a part's program: the arc length the axis positions have travelled
since the program started, and the blocks it went through (each visit of a block, with where
along the path it began and how long it was).

Sans-IO and cheap: one `observe` per poll of the positions. The arc length is the sum of the
straight steps between polled positions, so a circle polled 50 times a second at 1,500 mm/min
(0.5 mm a poll) on a 10 mm radius reads 0.01 % short; the learned profile (issue 19) indexes
the path by it, and a part that goes another way shows as another signature.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

#: A visit's length is compared to another part's within this (mm) at least: polling moves
#: where a position is read by up to one poll's travel at each end of a block (`tolerance`).
SIGNATURE_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class Visit:
    """One pass through a block: its number, where along the path it began, how long it was
    (mm; the last visit's length runs on until the part ends)."""

    block: int
    start_mm: float
    length_mm: float = 0.0
    step_mm: float = 0.0  # the longest step between two polls in it or across its ends


class PathTracker:
    """One part's path, built from the block number and the axis positions as they arrive."""

    def __init__(self) -> None:
        self.s_mm = 0.0
        self.visits: list[Visit] = []
        self._position: tuple[float, ...] | None = None

    def observe(self, block: int | None, position: tuple[float, ...] | None) -> float:
        """One reading of the block number and the positions (either may be None: not
        configured or not read); returns the arc length so far."""
        step = 0.0
        if position is not None:
            if self._position is not None and len(position) == len(self._position):
                step = math.dist(self._position, position)
                self.s_mm += step
            self._position = position
        if block is not None and (not self.visits or self.visits[-1].block != block):
            self._close_visit(step)
            self.visits.append(Visit(block, self.s_mm, step_mm=step))
        elif self.visits and step > self.visits[-1].step_mm:
            last = self.visits[-1]
            self.visits[-1] = Visit(last.block, last.start_mm, last.length_mm, step)
        return self.s_mm

    def finish(self) -> tuple[Visit, ...]:
        """The part's visits, the last one closed at the path's end."""
        self._close_visit()
        return tuple(self.visits)

    def _close_visit(self, step_out: float = 0.0) -> None:
        """The last visit ends here; `step_out`, the step into the next block, is where
        its end lies too (somewhere along that step)."""
        if self.visits:
            last = self.visits[-1]
            self.visits[-1] = Visit(
                last.block, last.start_mm, self.s_mm - last.start_mm, max(last.step_mm, step_out)
            )


def tolerance(a: Visit, b: Visit) -> float:
    """How far two visits of one block may differ in length and still be the same: where a
    poll saw each end, so SIGNATURE_TOLERANCE_MM or the longest steps between polls in them
    (a rapid covers some 4 mm a 20 ms poll)."""
    return max(SIGNATURE_TOLERANCE_MM, a.step_mm + b.step_mm)


def same_path(a: tuple[Visit, ...], b: tuple[Visit, ...]) -> bool:
    """Two parts went the same way: the same blocks in the same order, each as long within
    `tolerance` (an edited block's length or an added block shows)."""
    return len(a) == len(b) and all(
        x.block == y.block and abs(x.length_mm - y.length_mm) <= tolerance(x, y)
        for x, y in zip(a, b, strict=True)
    )


def anchored(visits: tuple[Visit, ...], anchor: tuple[Visit, ...], s_mm: float) -> float:
    """`s_mm` along a part that went `visits`, as a place along the part that went `anchor`
    the same way: moved by the difference of the two starts of the block it lies in. Arc
    lengths summed from polled positions drift apart from part to part (a poll's chord cuts
    a rapid's corner by some millimetres, at another phase each part); block starts do not
    drift, so the drift is taken out block by block."""
    starts = [v.start_mm for v in visits]
    i = max(0, bisect.bisect_right(starts, s_mm) - 1)
    if i >= len(anchor):
        return s_mm
    return s_mm + anchor[i].start_mm - visits[i].start_mm
