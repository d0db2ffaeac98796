"""The hardware-in-the-loop bench: a simulated CNC controller the agent cannot tell from a
real one. Never imported by the agent itself, only by the demo, tests and benchmarks."""

import argparse


def host_port(text: str) -> tuple[str, int]:
    """The bench commands' HOST:PORT arguments (argparse type; host defaults to loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:5020")
    return host or "127.0.0.1", int(port)
