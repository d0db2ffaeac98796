"""sd_notify against a real datagram socket, as systemd opens it."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from edge_agent.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_each_message_is_one_datagram_of_key_value_lines(listener):
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready("controller up,\nspool 3")
    notifier.watchdog()
    notifier.extend_start(30, "waiting")
    notifier.stopping("stopping")
    notifier.reloading(5_000_000)
    assert [sock.recv(4096) for _ in range(5)] == [
        b"READY=1\nSTATUS=controller up, spool 3",  # a newline would start a new field
        b"WATCHDOG=1",
        b"EXTEND_TIMEOUT_USEC=30000000\nSTATUS=waiting",
        b"STOPPING=1\nSTATUS=stopping",
        b"RELOADING=1\nMONOTONIC_USEC=5000",
    ]
    assert notifier.sent == 5


def test_an_abstract_socket_name_starts_with_at():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"edge-agent-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_a_socket_nothing_is_sent():
    notifier = Notifier({})
    notifier.ready("x")
    assert not notifier.enabled and notifier.sent == 0 and notifier.watchdog_s is None


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            notifier.watchdog()
    assert notifier.sent == 0
    assert len([r for r in caplog.records if "notify socket" in r.message]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_period_comes_from_the_environment(env, expected):
    assert Notifier(env).watchdog_s == expected


def test_a_listener_that_stops_reading_never_blocks_the_sender(listener):
    path, sock = listener  # never read: its queue fills after a few datagrams
    notifier = Notifier({"NOTIFY_SOCKET": path})
    for _ in range(1000):
        notifier.watchdog()
    assert notifier.sent > 0 and notifier.failed == 1000 - notifier.sent
