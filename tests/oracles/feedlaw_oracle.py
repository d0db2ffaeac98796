"""Plain-Python twin of edge_agent/kernels/feedlaw.pyx: the adaptive feed control law.

Written from the spec (docs/adaptive-control.md), not from the kernel, to disagree with a
wrong kernel: same operations in the same order, so results match bit for bit.
"""

import math

FOLLOW_GAP = 0.05  # desired may lead the override by this share before the integral stops


class FeedLaw:
    def __init__(self, kp, ki, lo, hi, rise_per_s, fall_per_s, safe, deadband=0.0, override=100.0):
        self.kp, self.ki, self.lo, self.hi = kp, ki, lo, hi
        self.rise_per_s, self.fall_per_s, self.safe, self.deadband = (
            rise_per_s,
            fall_per_s,
            safe,
            deadband,
        )
        self.reset(override)

    def reset(self, override):
        if not math.isfinite(override):
            override = self.safe
        self.override = min(self.hi, max(self.lo, override))
        self.desired = self.override
        self.error = 0.0
        self.primed = False

    def limit(self, most):
        self.override = min(self.override, max(self.lo, most))

    def step(self, load, target, idle, dt):
        finite = all(math.isfinite(v) for v in (load, target, idle, dt))
        if not finite or dt <= 0.0 or target - idle <= 0.0:
            self.reset(min(self.override, self.safe))
            return self.override
        u = self.override
        e = (target - load) / (target - idle)
        if abs(e) < self.deadband:
            e = 0.0
        p = self.kp * (e - self.error) if self.primed else 0.0
        i = self.ki * e * dt
        v = self.desired
        at_clamp = (v >= self.hi and i > 0.0) or (v <= self.lo and i < 0.0)
        lagging = (v - u > FOLLOW_GAP * u and i > 0.0) or (u - v > FOLLOW_GAP * u and i < 0.0)
        if at_clamp or lagging:
            i = 0.0
        v = min(self.hi, max(self.lo, v + v * (p + i)))
        du = v - u
        du = min(du, self.rise_per_s * dt)
        du = max(du, -self.fall_per_s * dt)
        u = min(self.hi, max(self.lo, u + du))
        if not (math.isfinite(u) and math.isfinite(v)):
            self.reset(min(self.override, self.safe))
            return self.override
        self.desired = v
        self.override, self.error, self.primed = u, e, True
        return u
