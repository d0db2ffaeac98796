"""The demo's configuration as TOML text for an agent run as its own process (`edge-agent
run`), pointed at a test's controller, spool and (optionally) broker."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path


def demo_toml(
    controller_port: int,
    spool: Path,
    *,
    broker=None,
    keep: bool = False,
    control: bool = True,
    frame_interval_s: float = 1.0,
    delivery: str = "stored",
    extra: str = "",
) -> str:
    """demo.toml with this run's controller port, spool (and teach file beside it), and MQTT
    to `broker` (`delivery` "broker" when no collector acknowledges), or no upstream with
    `keep` (every payload stays in the spool), else the demo's telemetry file beside the
    spool; `extra` is appended (new sections only: TOML forbids a second header of one
    table)."""
    text = resources.files("edge_agent.defaults").joinpath("demo.toml").read_text()
    upstream = f'[upstream]\nkind = "file"\nfile_path = "{spool.with_suffix(".msgpack")}"'
    if keep:
        upstream = '[upstream]\nkind = "none"'
    elif broker is not None:
        upstream = (
            f'[upstream]\nkind = "mqtt"\nhost = "{broker.host}"\nport = {broker.port}\n'
            "reconnect_min_s = 0.1\nreconnect_max_s = 0.5\ndrain_on_stop_s = 10.0\n"
            f'delivery = "{delivery}"'
        )
    replacements = [
        (r"\nport = 5020\n", f"\nport = {controller_port}\n"),
        (r"\[control\]\nenabled = true", f"[control]\nenabled = {str(control).lower()}"),
        (r'teach_file = "demo-teach.json"', f'teach_file = "{spool.with_name("teach.json")}"'),
        (r"frame_interval_s = 1.0", f"frame_interval_s = {frame_interval_s}"),
        (r'\[spool\]\npath = "demo-spool.db"', f'[spool]\npath = "{spool}"'),
        (r'\[upstream\]\nkind = "file"\nfile_path = "demo-telemetry.msgpack"', upstream),
    ]
    for pattern, replacement in replacements:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"demo.toml changed: {pattern!r} not found"
    return text + extra
