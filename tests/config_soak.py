"""`make soak`'s configuration part: thousands of generated documents, each refused in one
line or run for a few simulated seconds (tests/config_run.py), never a traceback.

    python -m tests.config_soak --agent 10000 --collector 2000

Prints the count and the outcome split (valid, and refused by the key the error names);
exits 1 with hypothesis's smallest failing document when one fails. The suite runs the same
property on a few hundred documents (tests/test_config_property.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tests.config_docs import agent_documents, collector_documents
from tests.config_run import agent_outcome, collector_outcome


def soak(name: str, documents, outcome, count: int) -> Counter:
    """Run `count` documents through `outcome`; their outcomes, counted."""
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(document=documents)
    def check(document: bytes) -> None:
        with tempfile.TemporaryDirectory() as workdir:
            outcomes[outcome(document, Path(workdir))] += 1

    started = time.monotonic()
    check()
    report(name, outcomes, time.monotonic() - started)
    if sum(outcomes.values()) < count:  # hypothesis stops early only when it runs out of ideas
        raise SystemExit(f"config soak: {sum(outcomes.values())} {name} documents, {count} asked")
    return outcomes


def report(name: str, outcomes: Counter, seconds: float) -> None:
    total = sum(outcomes.values())
    valid = outcomes["valid"]
    print(
        f"config soak: {total} {name} documents in {seconds:.0f} s: {valid} valid (ran), "
        f"{total - valid} refused in one line, 0 tracebacks"
    )
    by_section: Counter[str] = Counter()
    for what, n in outcomes.items():
        if what != "valid":
            by_section[what.removeprefix("refused ").split(".")[0]] += n
    print("  refused by section: " + ", ".join(f"{k} {n}" for k, n in by_section.most_common()))
    refused = [(what, n) for what, n in outcomes.most_common() if what != "valid"]
    print(f"  refused by key ({len(refused)} keys; the 25 most frequent):")
    for what, n in refused[:25]:
        print(f"    {n:6d}  {what.removeprefix('refused ')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", type=int, default=10_000, help="agent documents (10000)")
    parser.add_argument("--collector", type=int, default=2_000, help="collector documents")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the refusals and the agents' own lines: thousands
    soak("agent", agent_documents(), agent_outcome, args.agent)
    soak("collector", collector_documents(), collector_outcome, args.collector)
    return 0


if __name__ == "__main__":
    sys.exit(main())
