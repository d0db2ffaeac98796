"""The collector's systemd unit as its documentation describes it (issue 16, items 12 and 14):
a dynamic user of its own, its configuration and secrets handed over as credentials, and a
memory bound above what its bounded inputs need."""

import re
from pathlib import Path

from edge_agent.collector import service

ROOT = Path(__file__).resolve().parent.parent
UNIT = (ROOT / "deploy" / "edge-collector.service").read_text()
SETTINGS = [
    tuple(line.split("=", 1)) for line in UNIT.splitlines() if re.match(r"^[A-Z]\w+=", line)
]


def values(key):
    return [value for k, value in SETTINGS if k == key]


def test_the_collector_runs_as_a_dynamic_user_not_as_the_agent():
    assert values("DynamicUser") == ["yes"]
    assert values("User") == values("Group") == values("SupplementaryGroups") == []
    doc = (ROOT / "docs" / "collector.md").read_text()
    assert "dynamic user" in doc and "User=edge-agent" not in doc


def test_its_configuration_is_the_one_install_writes_handed_over_as_a_credential():
    assert "collector.toml:/etc/edge-agent/collector.toml" in values("LoadCredential")
    (start,) = values("ExecStart")
    assert start.endswith(" collect run ${CREDENTIALS_DIRECTORY}/collector.toml")
    install = (ROOT / "deploy" / "install.sh").read_text()
    assert "put_config edge-collector.example.toml collector.toml" in install


def test_its_memory_is_bounded_above_what_its_bounded_inputs_need():
    (limit,) = values("MemoryMax")
    limit_bytes = int(limit.removesuffix("M")) << 20
    # The inbox, a batch, and the measured 150 MB peak of storing the largest frames.
    assert limit_bytes >= service.INBOX_BYTES + service.BATCH_BYTES + (150 << 20)
