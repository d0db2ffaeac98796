"""The reading model (edge_agent/control/predictor.py): what the reading has still to travel to
the profile's load, through the sensor's dead time and lag."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.control.predictor import NS, ReadingModel

pytestmark = pytest.mark.timeout(60)


def corrections(model, interval_s, loads):
    return [model.correction(round(i * interval_s * NS), load) for i, load in enumerate(loads)]


@settings(max_examples=200, deadline=None)
@given(
    dead_s=st.floats(0.0, 0.5),
    lag_s=st.floats(0.005, 0.8),
    interval_s=st.floats(0.01, 0.1),
    idle=st.floats(0.0, 20.0),
    step=st.floats(-60.0, 90.0).filter(lambda a: abs(a) > 1.0),
)
def test_after_a_step_the_gap_is_the_step_through_the_dead_time_then_decays_with_the_lag(
    dead_s, lag_s, interval_s, idle, step
):
    model = ReadingModel(dead_s, lag_s)
    before = round(1.0 / interval_s)  # a second settled at idle
    n = before + math.ceil((dead_s + 8 * lag_s) / interval_s) + 2
    loads = [idle] * before + [idle + step] * (n - before)
    gaps = corrections(model, interval_s, loads)
    assert gaps[:before] == [0.0] * before  # settled: nothing to travel
    t_step = before * interval_s
    for i in range(before, n):
        t = i * interval_s - t_step
        if t < dead_s - 1e-9:
            assert gaps[i] == pytest.approx(step)  # the sensor has seen nothing of it yet
        assert abs(gaps[i]) <= abs(step) + 1e-9 and gaps[i] * step >= 0  # never past it
    settling = gaps[before:]
    assert all(abs(b) <= abs(a) + 1e-9 for a, b in zip(settling, settling[1:], strict=False))
    assert abs(gaps[-1]) < 0.01 * abs(step)  # settled again
    # The gap's integral is the step times the mean delay (dead time + lag), within the step
    # times one reading interval: the model places the reading where the fit says it is.
    area = sum(gaps) * interval_s
    assert area == pytest.approx(step * (dead_s + lag_s), abs=abs(step) * interval_s * 1.01)


def test_a_reset_takes_the_next_load_as_settled():
    model = ReadingModel(0.1, 0.1)
    corrections(model, 0.02, [10.0] * 20)
    assert model.correction(round(0.4 * NS), 80.0) == 70.0
    model.reset()
    assert model.correction(round(0.42 * NS), 80.0) == 0.0


def test_without_a_lag_the_gap_is_the_step_for_the_dead_time_only():
    model = ReadingModel(0.05, 0.0)
    gaps = corrections(model, 0.01, [0.0] * 10 + [50.0] * 10)
    assert gaps[10:15] == [50.0] * 5 and gaps[15:] == [0.0] * 5
