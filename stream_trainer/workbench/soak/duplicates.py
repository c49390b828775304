"""Where every duplicate came from: the trained logs joined run by run, against the job's exits.

Each trainer process writes its own trained log (``phase{P}-run{R}-w{W}.log``, lines
``partition offset step``). An offset trained by two processes was trained again after the job
restarted between them; it is charged to the run whose end caused the restart (the earlier one),
and told apart by the step at which that run first trained it, against the step the next run of
the job started from (its restored checkpoint, ``restored_step``: the step before its first):

* ``since_checkpoint``: trained after the checkpoint the next run restored. The work a process
  loses when it ends without a final checkpoint (SIGKILL, a lost peer): at most the steps since
  its last checkpoint, ``E`` when every checkpoint succeeded, times ``B`` rows per worker.
* ``held_back``: trained at or before that checkpoint, yet read again: its partition's saved
  position was held below it by a message not yet handled (``state/progress.py``: a position
  passes a poison message or a transaction marker only once the dead-letter worker has re-read
  it, which waits while the broker or the dead-letter topic is away). ``behind`` names what held
  each partition: the offsets just below the re-trained range that the earlier run never trained.
* ``same_process``: trained twice by one process. Nothing the design allows (a reader replaced by
  the stall watchdog, a broker outage re-delivering): a trainer bug.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_trainer.workbench.soak.probe import Sample

Offset = tuple[int, int]
NAME = re.compile(r"phase(\d+)-run(\d+)-w(\d+)\.log$")


@dataclass(frozen=True)
class Training:
    phase: int
    run: int
    worker: int
    partition: int
    offset: int
    step: int


def trainings(paths: Iterable[Path]) -> list[Training]:
    """Every line of every trained log, in the order the runs started (a torn last line is skipped)."""
    out: list[Training] = []
    for path in paths:
        name = NAME.search(path.name)
        if name is None or not path.exists():
            continue
        phase, run, worker = (int(g) for g in name.groups())
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                out.append(Training(phase, run, worker, int(parts[0]), int(parts[1]), int(parts[2])))
    out.sort(key=lambda t: (t.phase, t.run))  # stable: each log's own order is kept
    return out


def _time_of(samples: Sequence[Sample], phase: int, step: int) -> float | None:
    """When the job of ``phase`` reached ``step``, to the sampling's 5 s (None: never sampled)."""
    return next((s.t_s for s in samples if s.phase == phase and s.step is not None and s.step >= step), None)


def attribute(runs: Sequence[tuple[int, int]], logs: Sequence[Training], exits: Sequence[Mapping[str, Any]],
              samples: Sequence[Sample], topic: Iterable[Offset], bad: Mapping[Offset, str], sizes: Mapping[int, int],
              rows_per_step: int, checkpoint_every: int) -> dict[str, Any]:
    """Per run that ended in a restart: its duplicates by kind, the bound on the lost work, and why.

    ``runs``: every (phase, run) in the order they started; ``sizes``: workers per phase.
    """
    order = {r: i for i, r in enumerate(runs)}
    steps: dict[tuple[int, int], list[int]] = defaultdict(list)
    seen: dict[Offset, list[Training]] = defaultdict(list)
    for t in logs:
        steps[(t.phase, t.run)].append(t.step)
        seen[(t.partition, t.offset)].append(t)
    restored = {r: min(s) - 1 for r, s in steps.items()}
    last = {r: max(s) for r, s in steps.items()}
    in_topic = set(topic)
    per_run: dict[tuple[int, int], dict[str, Any]] = {}
    same_process: list[dict[str, Any]] = []
    for (p, o), ts in seen.items():
        for a, b in itertools.pairwise(ts):
            ra, rb = (a.phase, a.run), (b.phase, b.run)
            if ra == rb:
                same_process.append({"partition": p, "offset": o, "run": f"phase{a.phase}/run{a.run}",
                                     "workers": [a.worker, b.worker], "steps": [a.step, b.step]})
                continue
            nxt = runs[order[ra] + 1] if order.get(ra, len(runs)) + 1 < len(runs) else rb
            entry = per_run.setdefault(ra, {"since_checkpoint": 0, "held_back": 0, "held": defaultdict(list)})
            if a.step > restored.get(nxt, a.step - 1):
                entry["since_checkpoint"] += 1
            else:
                entry["held_back"] += 1
                entry["held"][p].append((o, a.step))
    mine: dict[tuple[int, int], set[Offset]] = defaultdict(set)
    for t in logs:
        mine[(t.phase, t.run)].add((t.partition, t.offset))
    restarts = []
    for r in runs:
        if r not in per_run and not any(e["phase"] == r[0] and e["run"] == r[1] and e["cause"] != "stop"
                                        for e in exits):
            continue
        entry = per_run.get(r, {"since_checkpoint": 0, "held_back": 0, "held": {}})
        i = order[r]
        c = restored.get(runs[i + 1]) if i + 1 < len(runs) else None
        lost_steps = (last[r] - c) if c is not None and r in last else None
        workers = sizes.get(r[0], 1)
        held = []
        for p, items in sorted(entry["held"].items()):
            lo = min(o for o, _ in items)
            below = max((o for q, o in mine[r] if q == p and o < lo), default=-1)
            behind = [{"offset": x, "what": bad.get((p, x), "valid, untrained" if (p, x) in in_topic else
                                                     "no message (a transaction marker)")}
                      for x in range(below + 1, lo)][:10]
            held.append({"partition": p, "offsets": [lo, max(o for o, _ in items)], "rows": len(items),
                         "first_trained_steps": [min(s for _, s in items), max(s for _, s in items)],
                         "behind": behind})
        ended = [{k: e.get(k) for k in ("t_s", "worker", "code", "cause", "error")}
                 for e in exits if e["phase"] == r[0] and e["run"] == r[1]]
        restarts.append({
            "run": f"phase{r[0]}/run{r[1]}", "workers": workers, "ended": ended,
            "last_step": last.get(r), "next_run_restored_step": c, "steps_since_checkpoint": lost_steps,
            "last_step_t_s": _time_of(samples, r[0], last[r]) if r in last else None,
            "duplicates": entry["since_checkpoint"] + entry["held_back"],
            "since_checkpoint": entry["since_checkpoint"],
            "since_checkpoint_bound": checkpoint_every * rows_per_step * workers,
            "held_back": entry["held_back"], "held": held})
    return {"restarts": restarts, "same_process": len(same_process), "same_process_first": same_process[:20],
            "since_checkpoint": sum(r["since_checkpoint"] for r in restarts),
            "held_back": sum(r["held_back"] for r in restarts),
            "held_back_behind_valid": sum(1 for r in restarts for h in r["held"]
                                          if any(b["what"] == "valid, untrained" for b in h["behind"]))}
