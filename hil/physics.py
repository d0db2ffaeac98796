"""Cutting physics and the load sensor: the plant's formulas, free of any motion or I/O.

Spindle power from the material removal rate (Sandvik's milling formula):
P = Kc * a_p * a_e * v_f / (60e6 * eta) kW, a_p and a_e in mm, v_f in mm/min, Kc in N/mm².
Kc here is one figure per material, a typical specific cutting force at an average chip
thickness of about 0.1 mm; scenarios may override or add materials.
"""

from __future__ import annotations

import math
import random
from collections import deque

#: Specific cutting force Kc, N/mm², typical catalogue figures at ~0.1 mm chip thickness.
MATERIALS: dict[str, float] = {
    "aluminium": 700.0,  # 6061/7075
    "brass": 780.0,
    "cast_iron": 1100.0,  # grey, EN-GJL-250
    "steel": 1700.0,  # C45 / 1045, annealed
    "alloy_steel": 2100.0,  # 42CrMo4 / 4140, tempered
    "stainless": 2300.0,  # 1.4301 / 304
    "titanium": 1900.0,  # Ti-6Al-4V
    "hardened_steel": 3500.0,  # ~50 HRC
}


def cutting_power_kw(kc: float, ap_mm: float, ae_mm: float, vf_mm_min: float, eta: float) -> float:
    """Power the spindle spends on cutting (its idle power not included)."""
    return kc * ap_mm * ae_mm * vf_mm_min / (60e6 * eta)


def feed_for_power(kc: float, ap_mm: float, ae_mm: float, power_kw: float, eta: float) -> float:
    """The feed, mm/min, at which cutting takes `power_kw`; infinite when nothing is engaged."""
    if kc * ap_mm * ae_mm <= 0.0:
        return math.inf
    return power_kw * 60e6 * eta / (kc * ap_mm * ae_mm)


class LoadSensor:
    """What the controller reads of the true load: dead time, then a first-order lag, then
    Gaussian noise, then quantisation, on the plant's fixed step.

    The lag is the exact discretisation of dy/dt = (x - y) / tau, so a step response is
    1 - exp(-t / tau) at the step instants whatever the step size.
    """

    def __init__(
        self,
        step_s: float,
        lag_s: float = 0.0,
        dead_time_s: float = 0.0,
        quantum: float = 0.0,
        noise: float = 0.0,
        rng: random.Random | None = None,
    ):
        self._delay: deque[float] = deque([0.0] * round(dead_time_s / step_s))
        self._alpha = 1.0 - math.exp(-step_s / lag_s) if lag_s > 0 else 1.0
        self._quantum = quantum
        self._noise = noise
        self._rng = rng or random.Random(0)
        self._lagged = 0.0
        self.reading = 0.0

    def update(self, true_value: float) -> float:
        """Feed the true value of this step; the reading the controller shows now."""
        if self._delay:
            self._delay.append(true_value)
            true_value = self._delay.popleft()
        self._lagged += (true_value - self._lagged) * self._alpha
        value = self._lagged
        if self._noise:
            value += self._rng.gauss(0.0, self._noise)
        if self._quantum:
            value = round(value / self._quantum) * self._quantum
        self.reading = max(0.0, value)
        return self.reading
