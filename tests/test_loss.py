"""Breakage against the learned profile (control/loss.py), on simulated time: cutting load
lost where the profile says the tool cuts, and nowhere the profile cannot vouch for."""

import array

import pytest

from edge_agent.control.loss import ProfileLossWatch
from edge_agent.control.path import Visit
from edge_agent.control.preview import Preview
from edge_agent.control.profile import Profile

pytestmark = pytest.mark.timeout(30)

NS = 1_000_000_000
POLL_NS = 20_000_000
#: A cut from 50 to 250 mm at k = 40 (% load per 100 % feed), air around it.
K = array.array("d", [0.0] * 50 + [40.0] * 200 + [0.0] * 50)
DELAY_S = 0.2


def preview():
    return Preview(Profile(1, 1, (Visit(10, 0.0, 300.0),), K, 3), lead_s=0.2, margin_s=0.05)


def run(watch, p, speed_mm_s, loads, start_mm=0.0, feed=100.0):
    """A reading every poll while the tool moves at `speed_mm_s`; the first detail, with the
    place and the reading's index, or None."""
    for i, load in enumerate(loads):
        t_ns, s_mm = i * POLL_NS, start_mm + speed_mm_s * i * POLL_NS / NS
        watch.moved(t_ns, s_mm, feed)
        seen = watch.observe(t_ns, load, p, DELAY_S, min_cut_pct=10.0)
        if seen is not None:
            return seen, s_mm, i
    return None


def test_load_lost_in_the_middle_of_a_known_cut_is_a_breakage_on_the_third_reading():
    loads = [40.0] * 100 + [4.0] * 10  # cutting at 50 mm/s from 60 mm; broken at 160 mm
    seen, s_mm, i = run(ProfileLossWatch(), preview(), 50.0, loads, start_mm=60.0)
    assert i == 102 and seen == {"expected_pct": 40.0, "cut_pct": 4.0}


def test_the_least_load_expected_follows_the_feed_the_tool_ran_at():
    watch = ProfileLossWatch()
    assert run(watch, preview(), 50.0, [18.0] * 100, start_mm=60.0, feed=50.0) is None
    seen, _, _ = run(ProfileLossWatch(), preview(), 50.0, [7.0] * 100, start_mm=60.0, feed=50.0)
    assert seen["expected_pct"] == 20.0  # 40 at half the feed


def test_two_low_readings_are_noise_not_a_breakage():
    loads = [40.0] * 60 + [4.0, 4.0, 40.0] * 10
    assert run(ProfileLossWatch(), preview(), 50.0, loads, start_mm=60.0) is None


@pytest.mark.parametrize(
    ("start_mm", "why"),
    [
        (210.0, "the exit the profile knows: the reading falls as the tool leaves at 250 mm"),
        (0.0, "the entry: the reading still shows the air it came from"),
    ],
)
def test_no_breakage_where_the_profile_does_not_say_cut_all_through_the_stretch(start_mm, why):
    loads = [40.0 if 50 <= start_mm + 1.0 * i < 250 else 0.0 for i in range(150)]
    assert run(ProfileLossWatch(), preview(), 50.0, loads, start_mm=start_mm) is None, why


def test_no_breakage_before_the_path_is_known_far_enough_back_or_off_the_profiles_way():
    assert run(ProfileLossWatch(), preview(), 50.0, [0.0] * 20, start_mm=100.0) is None
    p = preview()
    p.matching = False
    assert run(ProfileLossWatch(), p, 50.0, [0.0] * 100, start_mm=60.0) is None


def test_a_light_cut_under_the_watched_share_is_not_watched():
    light = Preview(
        Profile(1, 1, (Visit(10, 0.0, 300.0),), array.array("d", [8.0] * 300), 3), 0.2, 0.05
    )
    assert run(ProfileLossWatch(), light, 50.0, [0.0] * 100, start_mm=60.0) is None
