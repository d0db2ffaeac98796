"""The configuration property: any document is either refused with one line naming the file
and the key, or it is a configuration the agent runs without an exception.

Documents are the shipped configurations mutated (tests/config_docs.py); "runs" is a few
simulated seconds of the whole agent, its payloads decoded back (tests/config_run.py). A few
hundred documents here; `make soak` runs ten thousand (tests/config_soak.py).
"""

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.config_docs import AGENT_BASES, agent_documents, collector_documents, dumps
from tests.config_run import agent_outcome, collector_outcome

pytestmark = pytest.mark.timeout(120)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=agent_documents())
def test_an_agent_config_is_refused_in_one_line_or_runs(document):
    with tempfile.TemporaryDirectory() as workdir:
        assert agent_outcome(document, Path(workdir)).startswith(("valid", "refused "))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=collector_documents())
def test_a_collector_config_is_refused_in_one_line_or_runs(document):
    with tempfile.TemporaryDirectory() as workdir:
        assert collector_outcome(document, Path(workdir)).startswith(("valid", "refused "))


@pytest.mark.parametrize("name", list(AGENT_BASES))
def test_each_starting_document_runs(name, tmp_path):
    assert agent_outcome(dumps(AGENT_BASES[name]).encode(), tmp_path) == "valid"
