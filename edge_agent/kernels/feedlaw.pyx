# cython: language_level=3
"""The adaptive feed control law: an incremental PI on spindle load, written as an override %.

Imports nothing of the agent. The plain-Python twin is `tests/oracles/feedlaw_oracle.py`;
docs/adaptive-control.md is the spec and the tuning method.

The error is relative to the cutting load the target asks for, e = (target - load) /
(target - idle), and the increment is relative to the override, du = u (kp de + ki e dt):
cutting load is proportional to feed, so the plant's gain from override to load is
(load - idle) / u and this scaling keeps the loop gain the same at 50 % and at 150 %
override, and for a light finishing cut as for heavy roughing.

The PI moves its own output, `desired`, within the clamps [lo, hi]; the override written
follows `desired` within asymmetric rate limits (`fall_per_s` to cut fast, `rise_per_s` to
raise slowly). Rate-limiting the PI's own state instead would clip noise's upward steps and
pass its downward ones, ratcheting the override down: a load held below target in proportion
to the noise (docs/adaptive-control.md). The integral term is dropped while `desired` sits at
a clamp it pushes towards, or runs ahead of the override by more than `FOLLOW_GAP` in its
direction (the override cannot follow yet: no wind-up). A load within `deadband` (relative)
of the target counts as on target. A non-finite input, a dt that is not positive, or a target not above idle is a fault:
the output becomes min(current, safe) and the law restarts from there.
"""

cimport cython
from libc.math cimport fabs, isfinite

#: How far (relative to the override) `desired` may run ahead of the rate-limited override
#: before the integral stops pushing it further: beyond the noise's swing, within a step's.
FOLLOW_GAP = 0.05


@cython.final
cdef class FeedLaw:
    cdef readonly double kp, ki, deadband, lo, hi, rise_per_s, fall_per_s, safe
    cdef readonly double override, desired, error
    cdef readonly bint primed

    def __init__(
        self,
        double kp,
        double ki,
        double lo,
        double hi,
        double rise_per_s,
        double fall_per_s,
        double safe,
        double deadband=0.0,
        double override=100.0,
    ):
        if not (0.0 < lo <= hi) or not isfinite(hi):
            raise ValueError(f"clamps must satisfy 0 < lo <= hi, got lo={lo}, hi={hi}")
        if not (lo <= safe <= hi):
            raise ValueError(f"safe override {safe} must lie within [{lo}, {hi}]")
        for name, value in (
            ("kp", kp), ("ki", ki), ("rise_per_s", rise_per_s), ("fall_per_s", fall_per_s),
            ("deadband", deadband),
        ):
            if not (isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.kp, self.ki, self.deadband = kp, ki, deadband
        self.lo, self.hi, self.safe = lo, hi, safe
        self.rise_per_s, self.fall_per_s = rise_per_s, fall_per_s
        self.reset(override)

    cpdef void reset(self, double override):
        """Start again from `override` (clamped); the next step has no previous error."""
        if not isfinite(override):
            override = self.safe
        self.override = min(self.hi, max(self.lo, override))
        self.desired = self.override
        self.error = 0.0
        self.primed = False

    cpdef void limit(self, double most):
        """Hold the override written at `most` or under (the knob is down, the load is over
        target) without resetting the law: its own output and memory stay, so noise that
        the limit clips does not bias it."""
        self.override = min(self.override, max(self.lo, most))

    cpdef double step(self, double load, double target, double idle, double dt):
        """One control update for one new load sample; the override % to write."""
        cdef double span = target - idle
        cdef double e, p, i, du, v, u = self.override
        if not (isfinite(load) and isfinite(target) and isfinite(idle) and isfinite(dt)) or (
            dt <= 0.0 or span <= 0.0
        ):
            self.reset(min(u, self.safe))
            return self.override
        e = (target - load) / span
        if fabs(e) < self.deadband:
            e = 0.0
        p = self.kp * (e - self.error) if self.primed else 0.0
        i = self.ki * e * dt
        v = self.desired
        if (v >= self.hi and i > 0.0) or (v <= self.lo and i < 0.0):
            i = 0.0  # integrator freeze: the output cannot follow, do not wind up
        elif (v - u > FOLLOW_GAP * u and i > 0.0) or (u - v > FOLLOW_GAP * u and i < 0.0):
            i = 0.0  # the override is still catching up: do not push further
        v = min(self.hi, max(self.lo, v + v * (p + i)))
        du = v - u
        if du > self.rise_per_s * dt:
            du = self.rise_per_s * dt
        elif du < -self.fall_per_s * dt:
            du = -self.fall_per_s * dt
        u = min(self.hi, max(self.lo, u + du))
        if not (isfinite(u) and isfinite(v)):
            self.reset(min(self.override, self.safe))
            return self.override
        self.override = u
        self.desired = v
        self.error = e
        self.primed = True
        return u
