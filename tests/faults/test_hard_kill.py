"""Scenario 1: the trainer is SIGKILLed at random moments and restarted while the producer keeps going.

What must hold, from Kafka and checkpoint state alone:

* nothing is skipped: every offset the topic holds at the end was trained at least once;
* every checkpoint is honest: all offsets below its saved positions were trained before it;
* a restart resumes exactly at the newest checkpoint's positions (nothing below them is trained
  again);
* duplicates per kill stay within ``DUPLICATE_BOUND``.

The duplicate bound. After a kill, the restart re-trains exactly the messages that were trained at
or above the checkpoint's positions. Those are

1. the messages trained after the checkpoint: at most ``CHECKPOINT_EVERY`` steps of ``BATCH``
   images (a save happens right after every ``CHECKPOINT_EVERY``-th step; a kill during the save
   loses at most that many), and
2. messages trained *before* the checkpoint that overtook an older message of their partition
   still waiting in the shuffle window: a position only advances over an unbroken chain, so
   they sit above it. With tf.data's uniform shuffle an element stays in a window of ``SHUFFLE``
   for k further arrivals with probability (1 - 1/SHUFFLE)^k, so the overtakers are not strictly
   bounded; ``REORDER_ALLOWANCE`` = 8 windows per partition is exceeded with probability < 1e-5
   per checkpoint with 2 partitions (the oldest element must survive ~16 windows of arrivals).

Prefetch and the feeder queue (2 batches) add nothing to (1) or (2): messages there were read but
never trained, so after a kill they are re-read, not re-trained.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from random import Random

import pytest
from faultlib import (
    BATCH,
    CHECKPOINT_EVERY,
    SHUFFLE,
    Rig,
    SavedCheckpoint,
    committed_offsets,
    latest_checkpoint,
    log_ends,
    missing_offsets,
    read_trained,
)

REORDER_ALLOWANCE = 8 * SHUFFLE
DUPLICATE_BOUND = CHECKPOINT_EVERY * BATCH + REORDER_ALLOWANCE
# A kill lands this long after the restarted trainer's first step: mid-step, mid-checkpoint, idle.
KILL_DELAY_S = (0.0, 8.0)


@dataclass
class KillRecord:
    kill: int
    after_first_step_s: float
    checkpoint_step: int | None
    checkpoint_positions: dict[int, int]
    at_risk: int  # trained before the kill at or above the checkpoint: re-trained after restart
    trained_after_checkpoint: int  # part of at_risk trained after the checkpoint's step
    overtakers: int  # part of at_risk trained before it (shuffle reordering)
    retrained_by_next_run: int


def _first_step(rig: Rig, log: Path, trainer: object, producer: object) -> None:
    rig.wait_until(lambda: read_trained(log), 180, f"the trainer to train a first batch ({log.name})",
                   alive=(trainer, producer))  # type: ignore[arg-type]


def _sleep_alive(rig: Rig, seconds: float, *programs: object) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rig.require_alive(*programs)  # type: ignore[arg-type]
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _kill_and_restart(rig: Rig, rng: Random, kills: int) -> None:
    """Run the scenario and assert on what the trained logs, checkpoints and the group hold."""
    producer = rig.producer(rig.write_config("producer.yaml", rig.settings()))
    logs: list[Path] = []
    checkpoints: list[SavedCheckpoint | None] = []
    delays: list[float] = []
    for run in range(kills + 1):
        log = rig.tmp / f"trained-{run}.log"
        logs.append(log)
        config = rig.write_config(f"trainer-{run}.yaml", rig.settings(trainer__loop__trained_log=str(log)))
        trainer = rig.trainer(config, f"trainer-{run}")
        _first_step(rig, log, trainer, producer)
        if run == kills:
            break
        delays.append(rng.uniform(*KILL_DELAY_S))
        _sleep_alive(rig, delays[-1], trainer, producer)
        trainer.kill()
        checkpoints.append(latest_checkpoint(rig.checkpoint_dir))

    # Keep producing (the shuffle window only drains while new messages arrive) until the last run
    # has trained everything the topic held when it started training, from its restart point on.
    ends = log_ends(rig.bootstrap, rig.topic)
    last_start = checkpoints[-1].positions if checkpoints and checkpoints[-1] else {}
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(logs[-1])), ends,
                                               last_start),
                   240, f"the last run to train every offset below {ends}", alive=(trainer, producer))
    assert trainer.stop() == 0, f"the trainer did not stop cleanly on SIGTERM{rig.logs()}"
    producer.stop()

    runs = [read_trained(log) for log in logs]
    counts = Counter((p, o) for lines in runs for p, o, _ in lines)
    assert not missing_offsets(counts, ends), f"offsets never trained (skipped): {missing_offsets(counts, ends)}"

    records = []
    before: set[tuple[int, int]] = set()
    for kill, ckpt in enumerate(checkpoints):
        killed_run = runs[kill]
        before |= {(p, o) for p, o, _ in killed_run}
        positions = ckpt.positions if ckpt else dict.fromkeys(range(rig.partitions), 0)
        untrained_below = sorted((p, o) for p, end in positions.items() for o in range(end) if (p, o) not in before)
        assert not untrained_below, (
            f"kill {kill}: checkpoint {ckpt} claims offsets that were never trained: {untrained_below[:20]}")
        next_run = {(p, o) for p, o, _ in runs[kill + 1]}
        below = sorted((p, o) for p, o in next_run if o < positions.get(p, 0))
        assert not below, f"kill {kill}: the restart trained offsets below the checkpoint {positions}: {below[:20]}"

        at_risk = {(p, o) for p, o in before if o >= positions.get(p, 0)}
        step = ckpt.step if ckpt else 0
        # Steps restart from the checkpoint's step, so only the killed run's log tells "after".
        after = {(p, o) for p, o, s in killed_run if s > step and (p, o) in at_risk}
        records.append(KillRecord(
            kill=kill, after_first_step_s=round(delays[kill], 2), checkpoint_step=ckpt.step if ckpt else None,
            checkpoint_positions=positions, at_risk=len(at_risk), trained_after_checkpoint=len(after),
            overtakers=len(at_risk - after), retrained_by_next_run=len(at_risk & next_run)))

    duplicates = sum(n - 1 for n in counts.values())
    report = {"kills": kills, "produced_offsets_checked": sum(ends.values()), "skipped": 0,
              "duplicates_total": duplicates, "duplicate_bound_per_kill": DUPLICATE_BOUND,
              "per_kill": [asdict(r) for r in records]}
    (rig.tmp / "report.json").write_text(json.dumps(report, indent=1))
    print(f"hard-kill report: {json.dumps(report)}")
    for r in records:
        assert r.at_risk <= DUPLICATE_BOUND, (
            f"kill {r.kill}: {r.at_risk} messages re-trained (> {DUPLICATE_BOUND}): {r}")
    assert duplicates <= kills * DUPLICATE_BOUND, report

    # After the clean stop the group holds exactly what the final checkpoint holds, and that covers
    # everything that was checked above.
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None
    committed = committed_offsets(rig.bootstrap, rig.group, rig.topic, rig.partitions)
    assert committed == final.positions, f"group offsets {committed} differ from the final checkpoint {final}"
    assert all(final.positions[p] >= end for p, end in ends.items()), (final, ends)


@pytest.mark.faults
def test_hard_kills_skip_no_offset_and_duplicate_within_one_checkpoint_interval(rig: Rig, rng: Random) -> None:
    _kill_and_restart(rig, rng, kills=2)


@pytest.mark.faults
@pytest.mark.slow
def test_six_hard_kills_skip_no_offset_and_duplicate_within_one_checkpoint_interval(
        rig: Rig, rng: Random) -> None:
    _kill_and_restart(rig, rng, kills=6)
