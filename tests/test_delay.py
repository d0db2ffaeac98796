"""The loop's delay fitted on the machine (control/delay.py): the load reading's response to
the spindle starting, on a seeded, randomized family of sensors (the plant's own sensor model:
dead time, first-order lag, noise, quantization), each step at a random phase of the poll."""

import random

import pytest

from edge_agent.control.delay import fit_step, fit_steps
from hil.physics import LoadSensor

pytestmark = pytest.mark.timeout(60)

POLL_S = 0.02
STEP_S = 0.001  # the sensor model's own step: finer than the poll


def spindle_start(
    rng: random.Random,
    dead_s: float,
    lag_s: float,
    idle: float,
    window_s=1.0,
    noise=0.3,
    poll_s=POLL_S,
):
    """Readings every poll after the spindle starts, the first poll a random fraction of a
    poll after the step: (times after the first poll, readings)."""
    sensor = LoadSensor(STEP_S, lag_s, dead_s, 0.1, noise, rng)
    phase = rng.uniform(0.0, poll_s)
    t, due, times, readings = 0.0, phase, [], []
    while due < window_s + phase:
        sensor.update(idle)
        t += STEP_S
        if t >= due - 1e-12:
            times.append(due - phase)
            readings.append(sensor.reading)
            due += poll_s
    return times, readings


def family(seed: int, cases: int):
    """(true mean delay, fitted mean delay or None) for `cases` random sensors."""
    rng = random.Random(seed)
    out = []
    for _ in range(cases):
        dead, lag, idle = rng.uniform(0.0, 0.2), rng.uniform(0.03, 0.4), rng.uniform(4.0, 12.0)
        fit = fit_step(*spindle_start(rng, dead, lag, idle))
        out.append((dead + lag, None if fit is None else fit.mean_s))
    return out


def test_the_mean_delay_is_found_within_two_polls_on_sensors_it_was_not_tuned_on():
    # The grids were set looking at seed 7 (|error| p50 11 ms, p95 35 ms, max 53 ms); seed 11
    # is held out (p95 38 ms, max 99 ms: a 0.4 s lag seen for 1 s only is the hardest).
    results = family(11, 150)
    assert all(fitted is not None for _, fitted in results)  # every step is fitted
    errors = sorted(abs(fitted - true) for true, fitted in results)
    p95 = errors[int(0.95 * len(errors)) - 1]
    assert p95 <= 2 * POLL_S and errors[-1] <= 0.1
    bias = sum(fitted - true for true, fitted in results) / len(results)
    assert -POLL_S <= bias <= 0.0  # the step is half a poll before the first reading, on average


def test_noisy_readings_at_slow_polls_are_fitted_over_three_starts_or_refused():
    # The scenario family's sensors and polls (noise 0-3 %, a poll of 20-100 ms), 2 s of air
    # after each start, three parts' starts fitted together as the profile book does. The
    # noise rules, the longest-lag split and the joint fit were set looking at seeds 7 and
    # 11 (refused 19-20 %, error p95 1.9-2.0 polls, max 0.14-0.24 s); seed 13 is held out.
    # A step lost in noise of a tenth of it or more is refused: later starts are fitted.
    rng = random.Random(13)
    errors, refused = [], 0
    for _ in range(200):
        dead, lag, idle = rng.uniform(0.0, 0.2), rng.uniform(0.03, 0.4), rng.uniform(4.0, 12.0)
        noise, poll = rng.uniform(0.0, 3.0), rng.randint(2, 10) / 100
        starts = [spindle_start(rng, dead, lag, idle, 2.0, noise, poll) for _ in range(3)]
        fit = fit_steps(starts)
        if fit is None:
            refused += 1
            assert noise > 0.1 * idle  # only a step the noise hides
            continue
        error = abs(fit.mean_s - dead - lag)
        errors.append((error / poll, error))
    assert refused <= 0.25 * 200
    in_polls = sorted(e for e, _ in errors)
    assert in_polls[int(0.95 * len(errors)) - 1] <= 2.5
    assert max(s for _, s in errors) <= 0.3


def test_a_reading_still_falling_from_the_last_part_does_not_bend_the_fit():
    rng = random.Random(3)
    sensor = LoadSensor(STEP_S, 0.3, 0.05, 0.1, 0.3, rng)
    for _ in range(1000):  # a cut at 70 %, then the spindle off for a second only
        sensor.update(70.0)
    for _ in range(1000):
        sensor.update(0.0)
    times, readings = [], []
    for i in range(1000):
        sensor.update(8.0)
        if i % 20 == 19:
            times.append((i + 1) * STEP_S)
            readings.append(sensor.reading)
    fit = fit_step(times, readings)
    assert readings[0] > 2.0  # still falling when the spindle starts again
    # Of the splits that fit within the noise the longest lag: on the slow side, if off.
    assert 0.35 - 0.03 <= fit.mean_s <= 0.35 + 0.05
    assert fit.final_pct == pytest.approx(8, abs=0.5)


@pytest.mark.parametrize(
    "readings",
    [
        [0.0] * 40,  # no step at all
        [0.0] * 5 + [30.0, 60.0, 20.0, 8.0] + [8.0] * 31,  # an acceleration peak, not a lag
        [8.0] * 5,  # too few readings
    ],
    ids=["flat", "peak", "short"],
)
def test_what_is_not_a_first_order_step_is_refused(readings):
    times = [i * POLL_S for i in range(len(readings))]
    assert fit_step(times, readings) is None
