"""LinuxCNC in the loop: a real CNC controller running real G-code on the bench, with the agent
adapting its feed over Modbus (docs/linuxcnc.md).

`runner` starts a headless simulated LinuxCNC (config/) and runs programs (programs/) on it;
`adapter` serves a LinuxCNC's state through the simulated controller's register map
(hil/register_map.py) and applies the agent's override, by the rule in `override`. The parts
that need LinuxCNC's own Python modules (`linuxcnc`, `hal`) run under Debian's python3:
`session` (the headless display) and `machine_side` (the adapter's HAL component); they and this
file import nothing but the standard library and each other.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_DIR = HERE / "config"
PROGRAMS_DIR = HERE / "programs"
SCENARIOS_DIR = HERE / "scenarios"
#: The repository root: what the Debian python3 side gets on its PYTHONPATH.
REPO_ROOT = HERE.parent.parent
#: Where LinuxCNC's Python modules are: Debian's python3 (linuxcnc-uspace is built for it).
SYSTEM_PYTHON = "/usr/bin/python3"
