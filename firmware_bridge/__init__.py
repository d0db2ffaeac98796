"""The sensor bridge: MicroPython firmware for an RP2040 board and its frame protocol.

Every module here must import under MicroPython as well as CPython 3.11: the board's firmware
and the agent's host side share `firmware_bridge.protocol`. Imports nothing of `edge_agent`.
"""
