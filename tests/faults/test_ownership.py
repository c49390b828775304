"""One owner per checkpoint directory and per consumer group (``state/ownership.py``), end to end.

A trainer A runs. A second trainer on A's checkpoint directory, or on another directory but A's
consumer group, with ``trainer.checkpoint.when_owned: fail``, exits 2 with one line naming what
is owned. With ``wait`` (the default) and only the group shared, the newcomer holds its own
directory, trains nothing while A runs, and takes over from A's commits once A stops: the group
alone fences it, nothing of A's checkpoint directory is involved.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from faultlib import (
    Program,
    Rig,
    committed_offsets,
    latest_checkpoint,
    lock_is_free,
    log_ends,
    missing_offsets,
    read_trained,
)

PREFIX = "stream-trainer: error: "
# A refused trainer ends before it loads TensorFlow: interpreter start-up, the Kafka checks and
# one join of the group (the second trainer's join waits out the group's rebalance).
REFUSED_WITHIN_S = 60


def _refused(rig: Rig, program: Program) -> str:
    """Wait for ``program`` to exit; it must exit 2 with exactly one error line, which is returned."""
    rig.wait_until(lambda: not program.alive, REFUSED_WITHIN_S, f"{program.name} to be refused", interval_s=0.2)
    rc = program.stop()
    output = "".join(program.output)
    assert rc == 2, f"{program.name}: exit {rc}\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


@pytest.mark.faults
@pytest.mark.slow
def test_a_second_trainer_is_refused_by_the_directory_or_the_group_and_waits_for_the_group_alone(rig: Rig) -> None:
    producer = rig.producer(rig.write_config("producer.yaml", rig.settings()))
    log_a, log_c = rig.tmp / "trained-a.log", rig.tmp / "trained-c.log"
    a = rig.trainer(rig.write_config("a.yaml", rig.settings(trainer__loop__trained_log=str(log_a))), "trainer-a")
    rig.wait_until(lambda: len(read_trained(log_a)) >= 20, 180, "trainer A training", alive=(a, producer))

    # The same directory, when_owned: fail.
    same_dir = rig.trainer(rig.write_config("b1.yaml", rig.settings(
        trainer__checkpoint__when_owned="fail", trainer__loop__trained_log=str(rig.tmp / "trained-b1.log"))),
        "same-directory")
    error = _refused(rig, same_dir)
    assert error.startswith(f"{PREFIX}checkpoint directory {rig.checkpoint_dir} is in use by another trainer "
                            f"(pid {a.pid} on "), error
    assert "when_owned: wait" in error, error

    # Another directory, the same group, when_owned: fail.
    other_dir = rig.tmp / "checkpoints-b2"
    same_group = rig.trainer(rig.write_config("b2.yaml", rig.settings(
        trainer__checkpoint__when_owned="fail", trainer__checkpoint__dir=str(other_dir),
        trainer__loop__trained_log=str(rig.tmp / "trained-b2.log"))), "same-group")
    error = _refused(rig, same_group)
    assert error.startswith(f"{PREFIX}consumer group '{rig.group}' has other members ("), error
    assert lock_is_free(other_dir), "the refused trainer kept its directory's lock"
    assert not (rig.tmp / "trained-b1.log").exists() and not (rig.tmp / "trained-b2.log").exists()

    # Another directory, the same group, when_owned: wait. It takes its own directory, then the group stops it.
    dir_c = rig.tmp / "checkpoints-c"
    c = rig.trainer(rig.write_config("c.yaml", rig.settings(
        trainer__checkpoint__dir=str(dir_c), trainer__loop__trained_log=str(log_c))), "trainer-c")
    rig.wait_until(lambda: (dir_c / ".owner").exists() and f"pid {c.pid} " in (dir_c / ".owner").read_text(), 60,
                   "trainer C holding its own checkpoint directory", alive=(a, c, producer))
    waiting_at = len(read_trained(log_a))
    rig.wait_until(lambda: len(read_trained(log_a)) >= waiting_at + 60, 120, "trainer A training on",
                   alive=(a, c, producer))
    assert not lock_is_free(dir_c), "trainer C let go of its directory"
    assert read_trained(log_c) == [], "trainer C trained while A held the group"
    assert latest_checkpoint(dir_c) is None

    assert a.stop() == 0, rig.logs()
    handed = latest_checkpoint(rig.checkpoint_dir)
    assert handed is not None
    # C has no checkpoint: it starts from the group's commits, which A's final commit set (a commit
    # that lost a race with C's joins would leave an older one: work trained twice, never skipped).
    handover = committed_offsets(rig.bootstrap, rig.group, rig.topic, rig.partitions)
    print(f"A's final checkpoint {handed.positions}, the group's commits {handover}")
    assert all(handover[p] <= handed.positions[p] for p in range(rig.partitions)), (handover, handed)
    stopped_at = time.monotonic()
    rig.wait_until(lambda: len(read_trained(log_c)) >= 20, 180, "trainer C taking over", alive=(c, producer))
    print(f"trainer C trained {time.monotonic() - stopped_at:.1f} s after A stopped")
    assert producer.stop() == 0, rig.logs()
    ends = log_ends(rig.bootstrap, rig.topic)
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(log_c)), ends,
                                               handover), 180, "trainer C to catch up", alive=(c,))
    assert c.stop() == 0, rig.logs()
    run_a = {(p, o) for p, o, _ in read_trained(log_a)}
    run_c = {(p, o) for p, o, _ in read_trained(log_c)}
    for p in range(rig.partitions):
        assert {o for q, o in run_a if q == p} == set(range(handed.positions[p])), f"A, partition {p}"
        assert {o for q, o in run_c if q == p} == set(range(handover[p], ends[p])), f"C, partition {p}"
