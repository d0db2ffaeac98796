"""The plant's formulas: power from engagement, and the load sensor on its own."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.physics import LoadSensor, cutting_power_kw, feed_for_power

pytestmark = pytest.mark.timeout(60)

positive = st.floats(min_value=1e-3, max_value=1e4)


def test_power_formula_by_hand():
    # Sandvik's example figures: Kc 1700 N/mm², 4 x 10 mm at 1500 mm/min, eta 0.8 -> 2.125 kW
    assert cutting_power_kw(1700, 4, 10, 1500, 0.8) == pytest.approx(2.125)


@given(kc=positive, ap=positive, ae=positive, power=positive, eta=st.floats(0.1, 1.0))
def test_feed_for_power_inverts_the_power_formula(kc, ap, ae, power, eta):
    feed = feed_for_power(kc, ap, ae, power, eta)
    assert cutting_power_kw(kc, ap, ae, feed, eta) == pytest.approx(power, rel=1e-12)


def test_no_engagement_needs_infinite_feed():
    assert feed_for_power(1700, 0.0, 10, 1.0, 0.8) == math.inf


def test_dead_time_is_a_whole_number_of_steps():
    sensor = LoadSensor(step_s=0.01, dead_time_s=0.05)
    readings = [sensor.update(1.0) for _ in range(8)]
    assert readings == [0.0] * 5 + [1.0] * 3


def test_lag_is_exactly_first_order_at_the_steps():
    sensor = LoadSensor(step_s=0.01, lag_s=0.2)
    for k in range(1, 101):
        assert sensor.update(10.0) == pytest.approx(10 * (1 - math.exp(-0.01 * k / 0.2)))


def test_noise_is_seeded_and_the_reading_never_negative():
    def run(seed):
        sensor = LoadSensor(step_s=0.01, noise=1.0, rng=random.Random(seed))
        return [sensor.update(0.5) for _ in range(500)]

    assert run(3) == run(3) != run(4)
    assert min(run(3)) == 0.0 and max(run(3)) > 1.5


def test_quantisation_rounds_to_the_quantum():
    sensor = LoadSensor(step_s=0.01, quantum=0.1)
    assert sensor.update(12.345) == pytest.approx(12.3)
