"""Multi-worker jobs for the fault scenarios: start the workers of one job, and judge what they left.

A job is ``count`` ``stream-trainer run`` processes on 127.0.0.1 (``trainer.cluster.workers``),
each with its own trained log and metrics port. Started with ``observe=True`` each runs under
``observed_trainer.py``, which writes the weights it holds after the checkpoint restore (and the
chief's broadcast) to ``restored_file``.

A checkpoint is *honest* when its weights hold exactly the rows below its positions: every offset
below a partition's saved position went through a step at or before the checkpoint's step (in
this run or the runs it was restored from), and no offset at or above it did.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from faultlib import Program, Rig, SavedCheckpoint, TrainedLine, free_port

PARTITIONS = 4
# The peer timeout the jobs run with unless a scenario says otherwise.
PEER_TIMEOUT_S = 30

Offset = tuple[int, int]
Worker = tuple[Program, Path, int]  # the process, its trained log, its metrics port


def addresses(count: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(count)]


def restored_file(rig: Rig, run: str, index: int) -> Path:
    return rig.tmp / f"restored-{run}-w{index}.json"


def start_workers(rig: Rig, count: int, run: str, workers: list[str] | None = None, only: tuple[int, ...] = (),
                  observe: bool = False, faults: dict[int, list[str]] | None = None, **dotted: Any) -> list[Worker]:
    """Start ``count`` workers of one job (or ``only`` those); each gets its trained log and metrics port.

    ``faults`` maps a worker index to ``faulty_trainer.py`` options: that worker runs with the fault."""
    workers = workers or addresses(count)
    started = []
    for i in only or range(count):
        log = rig.tmp / f"trained-{run}-w{i}.log"
        port = free_port()
        settings = rig.settings(**{"trainer__loop__trained_log": str(log), "trainer__metrics__port": port,
                                   "trainer__cluster__workers": workers if count > 1 else [],
                                   "trainer__cluster__index": i, "trainer__cluster__peer_timeout_s": PEER_TIMEOUT_S,
                                   "trainer__cluster__scratch_dir": str(rig.tmp / f"scratch-{run}-{i}"), **dotted})
        config = rig.write_config(f"{run}-w{i}.yaml", settings)
        name = f"trainer-{run}-w{i}"
        if faults and i in faults:
            program = rig.start(name, ["tests.faults.faulty_trainer", *faults[i], "--", "run", "--config", str(config)])
        elif observe:
            program = rig.start(name, ["tests.faults.observed_trainer", "--restored", str(restored_file(rig, run, i)),
                                       "--", "run", "--config", str(config)])
        else:
            program = rig.trainer(config, name)
        started.append((program, log, port))
    return started


def restored(rig: Rig, run: str, index: int) -> dict[str, Any]:
    """What worker ``index`` of ``run`` held after its restore: ``{"step", "checksum", "tensors"}``."""
    return dict(json.loads(restored_file(rig, run, index).read_text()))


def by_partition(offsets: Iterable[Offset]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = defaultdict(set)
    for p, o in offsets:
        out[p].add(o)
    return dict(out)


def in_weights(lines: Iterable[TrainedLine], ckpt: SavedCheckpoint) -> set[Offset]:
    """The offsets these trained lines put into the weights ``ckpt`` saved (steps up to its step)."""
    return {(p, o) for p, o, s in lines if s <= ckpt.step}


def assert_honest(held: set[Offset], ckpt: SavedCheckpoint) -> None:
    """The checkpoint's weights (``held``) hold exactly ``range(position)`` of every partition."""
    trained = by_partition(held)
    assert set(trained) <= set(ckpt.positions), f"trained partitions {sorted(trained)} missing from {ckpt}"
    for p, end in sorted(ckpt.positions.items()):
        got = trained.get(p, set())
        below = sorted(set(range(end)) - got)
        above = sorted(o for o in got if o >= end)
        assert not below and not above, (
            f"checkpoint step {ckpt.step}, partition {p} at {end}: offsets below it not in its weights "
            f"{below[:20]}, offsets at or above it in its weights {above[:20]}")
