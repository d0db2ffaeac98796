"""The feed control law kernel against its plain-Python oracle, and its guarantees."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.kernels.feedlaw import FeedLaw
from tests.oracles import feedlaw_oracle as oracle

pytestmark = pytest.mark.timeout(60)

PARAMS = dict(kp=0.6, ki=3.0, lo=50.0, hi=150.0, rise_per_s=50.0, fall_per_s=1000.0, safe=60.0)

adversarial_load = st.one_of(
    st.floats(min_value=-50, max_value=400),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 8.0, 70.0, 1e300, -1e300, 5e-324]),
)
steps = st.lists(
    st.tuples(adversarial_load, st.sampled_from([0.01, 0.02, 0.1, 0.0, -0.01, math.nan, 1e-9])),
    max_size=200,
)
params = st.fixed_dictionaries(
    {
        "kp": st.floats(0, 5),
        "ki": st.floats(0, 20),
        "lo": st.floats(1, 100),
        "rise_per_s": st.floats(0, 500),
        "fall_per_s": st.floats(0, 5000),
        "deadband": st.floats(0, 0.2),
    }
)


def laws(p):
    hi = p["lo"] + 100.0
    kw = {**p, "hi": hi, "safe": p["lo"]}
    return FeedLaw(**kw), oracle.FeedLaw(**kw)


@settings(max_examples=300)
@given(p=params, seq=steps, target=st.sampled_from([70.0, 30.0, 8.0, 5.0, math.nan]))
def test_kernel_equals_the_oracle_bit_for_bit(p, seq, target):
    kernel, twin = laws(p)
    for load, dt in seq:
        got, want = kernel.step(load, target, 8.0, dt), twin.step(load, target, 8.0, dt)
        assert got == want or (math.isnan(got) and math.isnan(want))
        assert kernel.error == twin.error


@settings(max_examples=300)
@given(p=params, seq=steps)
def test_output_stays_within_the_clamps_and_the_rate_limits(p, seq):
    law, _ = laws(p)
    for load, dt in seq:
        before = law.override
        after = law.step(load, 70.0, 8.0, dt)
        assert law.lo <= after <= law.hi
        healthy = math.isfinite(load) and math.isfinite(dt) and dt > 0
        if healthy:
            assert after - before <= law.rise_per_s * dt + 1e-9
            assert before - after <= law.fall_per_s * dt + 1e-9
        else:
            assert after == min(before, law.safe)


@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), start=st.floats(50, 150))
def test_a_non_finite_input_gives_min_of_current_and_safe(bad, start):
    for args in ((bad, 70.0, 8.0, 0.01), (60.0, bad, 8.0, 0.01), (60.0, 70.0, bad, 0.01)):
        law = FeedLaw(**PARAMS, override=start)
        assert law.step(*args) == min(start, PARAMS["safe"])


def test_a_target_not_above_idle_is_a_fault_too():
    law = FeedLaw(**PARAMS, override=120.0)
    assert law.step(50.0, 8.0, 8.0, 0.01) == 60.0


def test_the_integrator_freezes_at_a_clamp():
    law = FeedLaw(**{**PARAMS, "kp": 0.0}, override=150.0)
    for _ in range(100):  # far under target at the top clamp: no wind-up ...
        law.step(20.0, 70.0, 8.0, 0.01)
    assert law.override == 150.0
    law.step(90.0, 70.0, 8.0, 0.01)  # ... so the first sample over target comes down at once
    assert law.override < 150.0


def test_cutting_is_fast_and_raising_slow():
    law = FeedLaw(**{**PARAMS, "kp": 2.0, "ki": 50.0}, override=100.0)
    law.step(70.0, 70.0, 8.0, 0.01)
    assert law.step(140.0, 70.0, 8.0, 0.01) == pytest.approx(90.0)  # 1000 %/s for 10 ms
    law.reset(100.0)
    law.step(70.0, 70.0, 8.0, 0.01)
    assert law.step(10.0, 70.0, 8.0, 0.01) == pytest.approx(100.5)  # 50 %/s for 10 ms


def test_a_load_inside_the_deadband_leaves_the_override_alone():
    law = FeedLaw(**PARAMS, deadband=0.05, override=100.0)
    law.step(70.0, 70.0, 8.0, 0.01)
    assert law.step(72.0, 70.0, 8.0, 0.01) == 100.0  # 3 % of the 62 % cutting load


def test_the_loop_gain_is_the_same_at_any_override():
    """The relative increment: one error gives the same *relative* change at 60 % and 140 %."""
    fast = {**PARAMS, "rise_per_s": 1000.0}  # no rate limit in the way
    low, high = FeedLaw(**fast, override=60.0), FeedLaw(**fast, override=140.0)
    low.step(70.0, 70.0, 8.0, 0.01)
    high.step(70.0, 70.0, 8.0, 0.01)
    a, b = low.step(66.0, 70.0, 8.0, 0.01), high.step(66.0, 70.0, 8.0, 0.01)
    assert a / 60.0 == pytest.approx(b / 140.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lo": 0.0}, "clamps must satisfy 0 < lo <= hi"),
        ({"lo": 160.0}, "clamps must satisfy"),
        ({"safe": 40.0}, "safe override 40.0 must lie within"),
        ({"kp": -1.0}, "kp must be a finite number >= 0"),
        ({"fall_per_s": math.nan}, "fall_per_s must be a finite number >= 0"),
    ],
)
def test_bad_parameters_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        FeedLaw(**{**PARAMS, **change})


@pytest.mark.parametrize("noise", [0.0, 1.0, 3.0])
def test_noise_does_not_bias_the_load_below_target(noise):
    """The rate limits act on the override written, not on the law's own state: at 3 % noise
    the asymmetric limits (60 %/s up, 1000 %/s down) used to ratchet the load to 50-55 % for a
    70 % target. A plant whose cutting load follows the override, read with Gaussian noise."""
    import random

    rng = random.Random(7)
    law = FeedLaw(0.6, 4.0, 50.0, 150.0, 60.0, 1000.0, 100.0, 0.01, 100.0)
    idle, cutting_at_100, loads = 8.0, 45.0, []
    for i in range(3000):  # 60 s at 50 Hz
        load = idle + cutting_at_100 * law.override / 100 + rng.gauss(0.0, noise)
        law.step(load, 70.0, idle, 0.02)
        if i >= 1000:
            loads.append(idle + cutting_at_100 * law.override / 100)
    assert sum(loads) / len(loads) == pytest.approx(70.0, abs=0.03 * 70.0)
