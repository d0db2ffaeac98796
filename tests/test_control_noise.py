"""The controller's noise estimate: what its margins widen by."""

import random

import pytest

from edge_agent.control.noise import NoiseEstimate

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 1.0, 3.0])
def test_the_estimate_finds_the_noise_of_a_steady_reading(sigma):
    rng, noise = random.Random(3), NoiseEstimate()
    for _ in range(500):
        noise.add(60.0 + rng.gauss(0.0, sigma))
    assert noise.sigma == pytest.approx(sigma, rel=0.25, abs=1e-9)


def test_steps_in_the_load_do_not_count_as_noise():
    rng, noise = random.Random(4), NoiseEstimate()
    for i in range(640):
        level = 20.0 if (i // 40) % 2 else 70.0  # a 50-point step every 40 samples
        noise.add(level + rng.gauss(0.0, 0.5))
    assert noise.sigma == pytest.approx(0.5, rel=0.35)


def test_ramps_in_the_load_do_not_count_as_noise():
    """An entry seen through the sensor's lag is a ramp: its slope is in every first difference
    of it, and at long lags ramps fill much of the window. The noise is in neither."""
    rng, noise = random.Random(5), NoiseEstimate()
    for i in range(640):
        phase = i % 80  # idle, rise, cut, fall: 20 samples each, 2 points a sample
        level = 10.0 + 2.0 * min(max(phase - 20, 0), 20) - 2.0 * min(max(phase - 60, 0), 20)
        noise.add(level + rng.gauss(0.0, 1.0))
    assert noise.sigma == pytest.approx(1.0, rel=0.15)
