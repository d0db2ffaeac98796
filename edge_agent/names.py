"""Site and machine ids: the one rule for what may name a machine, shared by the agent's
configuration (`[machine] site`, `machine_id`) and the collector's topic parser, so that the
collector takes exactly the names an agent can have; and the one rule for channel names,
shared by every source's config section.

A name becomes an MQTT topic level (`<prefix>/<site>/<machine>/<kind>`), the broker identity
`<site>/<machine>` its ACL pins (deploy/mosquitto/), and a key the collector stores rows by.
So: no separators or wildcards ('/', '+', '#'), nothing a path or a shell would read as
something else, and not "." or "..", which are valid topic levels but name the current and the
parent directory wherever a name ends up in a path. Pure functions; imports nothing.
"""

from __future__ import annotations

import re

#: Letters, digits, '_', '.', '-': a hostname's alphabet plus '_'. 64: a hostname label's
#: limit (RFC 1035), plenty for a plant's naming scheme.
MAX_NAME_CHARS = 64
_ALPHABET = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_NAME_CHARS}}}")
#: What a name must be, as the one-line errors say it.
RULE = f"1-{MAX_NAME_CHARS} of letters, digits, '_', '.', '-', and not '.' or '..'"


#: What may name a channel (a tag, a bridge channel, an OPC UA node): lower-case letters,
#: digits and '_', starting with a letter, at most 64 (it is a key in configs and telemetry).
CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: ... as the one-line errors say it.
CHANNEL_RULE = "a lower-case letter and hold only lower-case letters, digits and '_' (at most 64)"


def is_name(text: object) -> bool:
    """Whether `text` may name a site or a machine."""
    return isinstance(text, str) and bool(_ALPHABET.fullmatch(text)) and text not in (".", "..")
