"""Stamps against a monotonic base: continuous, jump-detecting, never backwards."""

from edge_agent.clock import FakeClock, SystemClock


def test_stamps_follow_the_monotonic_clock():
    clock = FakeClock(wall_s=1000.0)
    first = clock.stamp_ns()
    clock.advance(0.25)
    assert clock.stamp_ns() - first == 250_000_000


def test_a_wall_jump_does_not_move_stamps_until_detected():
    clock = FakeClock(wall_s=1000.0)
    before = clock.stamp_ns()
    clock.jump_wall(3600)
    assert clock.stamp_ns() == before


def test_a_forward_jump_is_reported_once_and_rebases():
    clock = FakeClock(wall_s=1000.0)
    clock.jump_wall(3600)
    assert clock.check_jump() == 3600 * 10**9
    assert clock.check_jump() == 0
    assert clock.stamp_ns() == (1000 + 3600) * 10**9


def test_small_drift_is_not_a_jump():
    clock = FakeClock(wall_s=1000.0)
    clock.jump_wall(0.5)
    assert clock.check_jump() == 0


def test_stamps_never_go_backwards_after_a_backward_jump():
    clock = FakeClock(wall_s=1000.0)
    clock.advance(10)
    high = clock.stamp_ns()
    clock.jump_wall(-60)
    assert clock.check_jump() == -60 * 10**9
    assert clock.stamp_ns() == high
    clock.advance(61)
    assert clock.stamp_ns() > high


def test_system_clock_stamps_are_close_to_the_wall_clock():
    import time

    clock = SystemClock()
    assert abs(clock.stamp_ns() - time.time_ns()) < 10**9
