"""The file upstream: payloads back to back, acknowledged after fsync, rotated past its size,
and a write failure ends the link with one line instead of acknowledging."""

import asyncio
import os
import stat

import pytest

from edge_agent.upstream import UpstreamError
from edge_agent.upstream.file_link import FileLink


def test_payloads_are_appended_and_acknowledged_once_on_disk(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))

    async def main():
        link = FileLink(tmp_path / "out" / "t.msgpack", rotate_bytes=1 << 20)
        await link.open()
        futures = [link.publish("ignored", bytes([i]) * 3) for i in range(5)]
        assert not any(f.done() for f in futures)  # nothing acknowledged before the write
        assert await asyncio.gather(*futures) == [0] * 5
        await link.close()

    asyncio.run(main())
    assert (tmp_path / "out" / "t.msgpack").read_bytes() == b"".join(
        bytes([i]) * 3 for i in range(5)
    )
    assert synced  # acknowledged after an fsync


def test_a_file_past_its_size_is_renamed_with_a_stamp_and_kept(tmp_path):
    async def main():
        link = FileLink(tmp_path / "t.msgpack", rotate_bytes=1 << 16)
        await link.open()
        for _ in range(3):
            await link.publish("t", b"x" * 40_000)
        await link.close()

    asyncio.run(main())
    rotated = sorted(p for p in tmp_path.iterdir() if p.name != "t.msgpack")
    assert len(rotated) == 1 and rotated[0].name.startswith("t-")
    assert rotated[0].suffix == ".msgpack"
    sizes = rotated[0].stat().st_size + (tmp_path / "t.msgpack").stat().st_size
    assert sizes == 120_000  # nothing lost across the rotation


def test_a_write_failure_closes_the_link_and_acknowledges_nothing(tmp_path):
    (tmp_path / "t.msgpack").mkdir()  # a folder where the file should be

    async def main():
        link = FileLink(tmp_path / "t.msgpack", rotate_bytes=1 << 20)
        await link.open()
        future = link.publish("t", b"payload")
        with pytest.raises(UpstreamError, match="t.msgpack: cannot write: Is a directory"):
            await future
        assert link.closed.done()
        with pytest.raises(UpstreamError):
            await link.publish("t", b"later")

    asyncio.run(main())


def test_a_new_files_name_is_on_disk_before_its_first_payload_is_acknowledged(
    tmp_path, monkeypatch
):
    """fsync of a new file makes its bytes durable, not its name: after a power cut the file
    (and acknowledged payloads, already deleted from the spool) could be gone. The directory
    is fsynced too, when the file is new and when a full one is renamed."""
    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(len(acked))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    acked: list[int] = []

    async def main():
        link = FileLink(tmp_path / "out" / "t.msgpack", rotate_bytes=1 << 16)
        await link.open()
        for n in range(3):  # the second one fills the file: renamed, the third makes a new one
            await link.publish("t", b"x" * 40_000)
            acked.append(n)
        await link.close()

    asyncio.run(main())
    assert synced_dirs[0] == 0  # before the first acknowledgement
    assert synced_dirs.count(1) >= 1 and synced_dirs.count(2) >= 1  # the rename, the new file


FULL_DISK_APPEND = """
    import asyncio, os
    from edge_agent.telemetry import wire
    from edge_agent.upstream.file_link import FileLink

    path = os.path.join(SMALL_DISK, "t.msgpack")
    payloads = [wire.event(b"b" * 8, seq, 0, "x", {"pad": "p" * 300}) for seq in range(1, 200)]

    async def publish_all(link):
        try:
            await asyncio.gather(*(link.publish("t", p) for p in payloads))
            return "all"
        except Exception as exc:
            return type(exc).__name__

    async def main():
        link = FileLink(path, rotate_bytes=1 << 30)
        await link.open()
        await link.publish("t", payloads[0])  # a whole payload first
        fill()
        print("full:", await publish_all(link))
        free()
        link = FileLink(path, rotate_bytes=1 << 30)
        print("after:", await publish_all(link))

    asyncio.run(main())
    import io
    from edge_agent.telemetry.decode import decode_stream
    with open(path, "rb") as f:
        print("decoded:", decode_stream(f, path, io.StringIO(), io.StringIO()))
"""


def test_a_full_disk_leaves_no_torn_payload_for_the_next_append(tmp_path):
    """On a real full file system the append fails part way; the file is cut back to whole
    payloads, so what is sent again after space is freed decodes, the first payload included."""
    from tests.small_disk import run_on_small_disk

    child = run_on_small_disk(tmp_path, FULL_DISK_APPEND, size="256k")
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert lines[0] == "full: UpstreamError"
    assert lines[1] == "after: all"
    assert lines[2] == f"decoded: ({1 + 199}, 0)"  # (printed, refused)
