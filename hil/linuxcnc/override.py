"""The adapter's feed rule: what LinuxCNC is told when the agent writes its override, when the
operator turns the feed-override knob, and when the agent falls silent.

LinuxCNC multiplies the programmed feed by two things the adapter can set: the feed override
(the operator's knob, `linuxcnc.command().feedrate`, 0 ... [DISPLAY]MAX_FEED_OVERRIDE) and the
HAL pin `motion.adaptive-feed` (0 ... 1 for a program that enabled it with `M52 P1`; in
LinuxCNC 2.9 a value above 1 does nothing). So the agent's override A is split in two:

- A <= 100 %: adaptive-feed = A, and the feed override is the operator's knob K, untouched
  (given back if the adapter had raised it);
- A > 100 %: adaptive-feed = 1 and the feed override = min(K x A, the max feed override);
- a change of the feed override the adapter did not command is the operator's: it becomes the
  knob K. If the adapter was raising the feed override then, it stops raising it (the knob stays
  where the operator put it) until the agent asks for 100 % or less again. The operator's hand
  wins: the adapter never moves the knob back against it;
- the agent must write its override at least every `refresh_timeout_s`; when it does not,
  A := min(A, fallback), and A stays there (the adapter never raises the feed on its own) until
  the agent writes again. Before the agent's first write, A = fallback. The fallback is at most
  100 %: nobody supervises the cut then, so nothing above the programmed feed is kept
  (docs/safety.md).

So effective feed = programmed x K x A, as on the simulated controller, except that while the
operator holds the knob against a raise, the raise waits.

Pure: no HAL, no NML, no clock; the caller passes the time (seconds, any monotonic origin) and
applies the commands. Standard library only: it runs under Debian's python3 next to LinuxCNC
and under the project's interpreter in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: The agent's override range, % (hil/register_map.py AGENT_OVERRIDE_RANGE_PCT; repeated here
#: because that module needs the agent's package, which this interpreter may not have).
OVERRIDE_RANGE_PCT = (0.0, 150.0)

#: The highest fallback: with the agent silent nothing above the programmed feed is kept.
FALLBACK_MAX_PCT = 100.0

#: Feed overrides closer than this are the same: LinuxCNC keeps a double, GUIs show whole %.
SAME_SCALE = 1e-4

#: How long a commanded feed override may take to show in the status before a different value
#: there counts as the operator's: an NML command is taken within a few task cycles (1 ms each
#: here), read back on the next status poll; half a second is ample and still shorter than a
#: hand on a knob.
SETTLE_S = 0.5


@dataclass(frozen=True)
class FeedCommand:
    """What to apply now: `adaptive_feed` for motion.adaptive-feed (0 ... 1) always, and a new
    feed override (`linuxcnc.command().feedrate`) when `feed_override` is not None."""

    adaptive_feed: float
    feed_override: float | None
    override_pct: float  # the agent's override in effect, after any fallback
    knob_pct: float  # the operator's knob, as the operator set it
    link_ok: bool  # the agent wrote within refresh_timeout_s
    raise_held: bool  # the operator turned the knob during a raise: the raise waits


class FeedRule:
    """The rule above, as a state machine: `agent_write` and `observe` feed it, `command` says
    what to apply. `max_feed_override` is [DISPLAY]MAX_FEED_OVERRIDE (LinuxCNC itself accepts
    any feed override a client sends; the displays clamp it, and so does this)."""

    def __init__(
        self,
        *,
        max_feed_override: float = 1.5,
        refresh_timeout_s: float = 2.0,
        fallback_pct: float = 100.0,
        settle_s: float = SETTLE_S,
    ) -> None:
        for name, value in (
            ("max_feed_override", max_feed_override),
            ("refresh_timeout_s", refresh_timeout_s),
            ("settle_s", settle_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a number above 0, got {value!r}")
        if not (math.isfinite(fallback_pct) and 0 <= fallback_pct <= FALLBACK_MAX_PCT):
            raise ValueError(
                f"fallback_pct: must be in 0 ... {FALLBACK_MAX_PCT:g} %, got {fallback_pct!r}"
            )
        self.max_feed_override = max_feed_override
        self.refresh_timeout_s = refresh_timeout_s
        self.fallback_pct = fallback_pct
        self.settle_s = settle_s
        self._override_pct = fallback_pct
        self._written_s: float | None = None  # the agent's last write
        self._link_ok = False
        self._knob: float | None = None  # the operator's feed override; None until observed
        self._raised: float | None = None  # the feed override the adapter set above the knob
        self._pending: float | None = None  # a feed override commanded, not yet seen
        self._pending_until_s = 0.0
        self._raise_held = False
        self.operator_changes = 0  # knob turns seen (for logs and tests)

    @property
    def override_pct(self) -> float:
        return self._override_pct

    def agent_write(self, pct: float, now_s: float) -> None:
        """The agent wrote `pct` to its register (out of range: clamped; NaN: ignored, and not
        counted as a refresh)."""
        if not math.isfinite(pct):
            return
        lo, hi = OVERRIDE_RANGE_PCT
        self._override_pct = min(hi, max(lo, float(pct)))
        self._written_s = now_s
        self._link_ok = True

    def observe(self, feed_override: float, now_s: float) -> None:
        """The feed override LinuxCNC reports now (`linuxcnc.stat().feedrate`)."""
        if not math.isfinite(feed_override):
            return
        if self._knob is None:
            self._knob = feed_override
            return
        if self._pending is not None:
            if abs(feed_override - self._pending) <= SAME_SCALE:
                self._pending = None
            elif now_s >= self._pending_until_s:
                self._pending = None  # never showed: someone else set it meanwhile
                self._operator(feed_override)
            return
        expected = self._raised if self._raised is not None else self._knob
        if abs(feed_override - expected) > SAME_SCALE:
            self._operator(feed_override)

    def _operator(self, feed_override: float) -> None:
        self.operator_changes += 1
        self._knob = feed_override
        if self._raised is not None:
            self._raised = None
            self._raise_held = True

    def command(self, now_s: float) -> FeedCommand:
        """What to apply at `now_s`: the fallback first, then the split of the override."""
        if self._link_ok and now_s - self._written_s > self.refresh_timeout_s:
            self._link_ok = False
            self._override_pct = min(self._override_pct, self.fallback_pct)
        return self._split(now_s, self._override_pct)

    def release(self, now_s: float) -> FeedCommand:
        """The adapter is going away: A := min(A, fallback) and the knob given back, so that
        nothing it leaves behind raises the feed."""
        self._link_ok = False
        self._override_pct = min(self._override_pct, self.fallback_pct)
        return self._split(now_s, self._override_pct)

    def _split(self, now_s: float, pct: float) -> FeedCommand:
        if pct <= 100.0:
            self._raise_held = False
        feed_override = None
        if self._knob is not None:
            want = self._knob
            if pct > 100.0 and not self._raise_held:
                want = max(self._knob, min(self._knob * pct / 100.0, self.max_feed_override))
            now_set = self._raised if self._raised is not None else self._knob
            if abs(want - now_set) > SAME_SCALE:
                feed_override = want
                self._pending, self._pending_until_s = want, now_s + self.settle_s
                self._raised = want if abs(want - self._knob) > SAME_SCALE else None
        return FeedCommand(
            adaptive_feed=min(pct, 100.0) / 100.0,
            feed_override=feed_override,
            override_pct=pct,
            knob_pct=100.0 * self._knob if self._knob is not None else 100.0,
            link_ok=self._link_ok,
            raise_held=self._raise_held,
        )
