"""The agent's package stands alone: the bench, the tests and the benchmarks use it, never the
other way round (a device's install carries none of them)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
NOT_SHIPPED = ("hil", "tests", "benchmarks")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_agent_module_imports_the_bench_tests_or_benchmarks():
    found = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(NOT_SHIPPED))
        for path in sorted((ROOT / "edge_agent").rglob("*.py"))
    }
    assert {path: names for path, names in found.items() if names} == {}


def test_every_command_of_the_agent_loads_without_the_bench(tmp_path):
    """Run from outside the source tree, with `hil` made unimportable: the CLI and the modules
    its commands load at run time (imported lazily there) all come up."""
    probe = (
        "import sys; sys.modules['hil'] = None\n"
        "import edge_agent.cli, edge_agent.service, edge_agent.daemon, edge_agent.status\n"
        "import edge_agent.collector.service\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip() == "ok", result.stderr
