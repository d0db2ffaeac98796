"""A finished part learned into its profile in a process of its own, then gone.

Learning is a few hundred milliseconds of pure Python per part here (the joint delay fit over
the last parts' spindle starts, the axes' lag, a pass over the readings) and several times that
on a Raspberry Pi. In a thread of the agent's process it held the GIL against the event loop
and the control thread: on the LinuxCNC bench, the Modbus polls after each part's end came late
enough to mark the spindle load stale and fault the controller. A child process takes none of
their time (a Pi has four cores) and gives its memory back when done.

The child is `python -m edge_agent.control.learning`: it imports this module and what it needs,
nothing of the agent's command line (a multiprocessing spawn would import the main script
again, and a fork of a process with running threads may inherit a lock some thread held). It
reads the book, the part, the idle load and the store pickled on its standard input, learns,
saves what it learned and the part beside the teach file (`ProfileStore`), and writes the book
and what happened pickled on its standard output. Pickles pass only between the agent and its
own child, never over a network or from a file. The host (`host.py`) logs, counts and stores
what happened on the event loop, one part at a time.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass, field

from .part import PartRecord
from .preview import ProfileBook
from .profile_store import ProfileError, ProfileStore


@dataclass
class Learned:
    """What learning one part gave: the book after it, its events, and the saves that failed
    as (counter, one-line message) for the host to count and log."""

    book: ProfileBook
    events: list[tuple[str, dict]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def learn_part(
    book: ProfileBook, part: PartRecord, idle_pct: float | None, store: ProfileStore
) -> Learned:
    """In the learning process: `part` into `book`, each profile it taught saved, and the part
    kept for `teach show` (learned from or not: a rejected part is still the last one)."""
    learned = Learned(book, book.learn(part, idle_pct))
    lag = book.axes_lag_s or 0.0
    for kind, detail in learned.events:
        if kind != "profile_learned":
            continue
        try:
            store.save(book.profiles[detail["program"], detail["tool"]], lag)
        except ProfileError as exc:
            learned.failures.append(
                ("profile_save_failed", f"{exc}; the profile is used until the agent stops")
            )
    learned.failures += keep_last_part(store, part)
    return learned


def keep_last_part(store: ProfileStore, part: PartRecord) -> list[tuple[str, str]]:
    """Each tool's readings of `part` beside its profile; the saves that failed."""
    failures = []
    for tool in part.tools:
        try:
            store.save_last_part(part, tool)
        except ProfileError as exc:
            failures.append(
                ("last_part_save_failed", f"{exc}; `teach show` shows the part before, if any")
            )
    return failures


#: A child still learning after this long is killed and the part counts as not learned: a
#: day-long program's record takes seconds on a Pi, not minutes.
CHILD_TIMEOUT_S = 300.0


class LearningFailed(RuntimeError):
    """The child did not learn the part: it failed, or took too long."""


def learn_in_child(
    book: ProfileBook, part: PartRecord, idle_pct: float | None, store: ProfileStore
) -> Learned:
    """`learn_part` in a child process; blocks the calling thread (run it in one) until the
    child is done. LearningFailed with the child's last line of error if it failed."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__],
            input=pickle.dumps((book, part, idle_pct, store)),
            capture_output=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LearningFailed(f"the learning process took over {CHILD_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise LearningFailed(
            f"the learning process exited with {done.returncode}: {said[-1] if said else '-'}"
        )
    return pickle.loads(done.stdout)


def main() -> None:
    """The child: one part in on stdin, what it gave out on stdout."""
    # By its name, not as __main__: what the child pickles must be found in the agent.
    from edge_agent.control.learning import learn_part as learn

    book, part, idle_pct, store = pickle.load(sys.stdin.buffer)
    sys.stdout.buffer.write(pickle.dumps(learn(book, part, idle_pct, store)))


if __name__ == "__main__":
    main()
