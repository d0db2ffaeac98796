"""20 SIGKILLs of a publishing agent, and every sequence number it allocated reaches the
collector exactly once (tests/soak.py; `make soak` runs hundreds)."""

import pytest

from tests import soak
from tests.mosquitto import require_mosquitto


@pytest.mark.timeout(240)
def test_every_number_arrives_exactly_once_through_twenty_sigkills(tmp_path):
    require_mosquitto()
    outcome = soak.run(kills=20, seed=20261129, workdir=tmp_path)
    assert outcome.last_seq > 100  # the agent really produced between the kills
    assert outcome.missing == [], f"{outcome.missing[:20]} (last {outcome.last_seq})"
    assert outcome.duplicates == 0
    assert outcome.gaps == 0  # nothing was dropped by the budget
    assert outcome.deaths >= 1  # the broker published last wills for killed agents
