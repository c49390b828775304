"""The chaos soak's verdict: pure functions of the samples, the topic and the trained log.

**Flat.** Each resource is judged per process lifetime: per worker, per phase (a phase is one
job shape: one worker, then two) and per process (a restarted trainer is a new process, which
grows its allocator pools, threads and readers again from nothing: a slope fitted across restarts
measures their warm-ups, not a leak), on samples taken after the process's warm-up: 120 s for RSS
(the first evaluations, checkpoints and export; a two-worker job on 2 cores is still growing a
minute in), 60 s for the counts. The quarters below are the process's own (within the phase, or
the piece between added partitions). Two tests, both must hold:

* *peaks*: the highest value in the phase's last quarter is at most the highest in its second
  quarter plus the tolerance (the first quarter is the phase's warm-up). Peaks and not means:
  restarts pull values down, never up, and a leak shows first in the peaks. A phase too short to
  have settled samples in both quarters (RSS in the 5-minute run) is "not judged", not "flat".
* *slope*: the Theil-Sen slope (the median of all pairwise slopes: a restart's dip or one odd
  sample does not move it) over the phase's second half is at most the tolerance per hour;
  judged only when that half spans at least ``MIN_SLOPE_WINDOW_S``: over a shorter window the
  sample spread extrapolates to any rate.

Tolerances (``TOLERANCES``): RSS may not grow 20 MiB/h (a week unattended = 3.4 GiB, what a
container sized at twice the steady RSS can no longer absorb; the plain soak's tighter 5 MiB/h
needs 20 quiet minutes, which a run with a fault every 30-60 s does not have) and its last-quarter
peak may be at most 10 % above the second quarter's (one evaluation or checkpoint more at the
wrong moment moves the peak a few percent). Threads, file descriptors and librdkafka consumers are
counts: a reader, its consumer and its sockets leaked per fault or per stall-watchdog round show
as +1 per occurrence, so the peak may rise by at most 4 threads, 8 fds and 0 consumers, and the
slope may be at most 10 threads, 20 fds and 2 consumers per hour (issue 20 measured a leak of 60
consumers an hour). A gauge the trainer does not serve is null: "not recorded", never "flat".
Threads are judged less TensorFlow's collective watchdogs (``stream_trainer_collective_watchdog_threads``;
two sleeping threads per collective op for ``peer_timeout_s``, so ~850 in a two-worker job that
votes a dozen rounds a second): those follow the round rate, up and down by hundreds, and would
hide a leak of one thread per fault; what is left is ours and TensorFlow's pools.

**Nothing lost, bounded duplicates, only malformed messages dead-lettered** (strict):

* skipped: valid offsets of the topic (read back with ``read_committed``, so transaction markers
  are not offsets anyone could train) that no trainer process ever trained;
* duplicates: trainings beyond the first of an offset, at most one checkpoint interval of work per
  restart of the job (``every_steps`` x ``batch_size`` x workers; docs/reliability.md);
* dead letters: every message the soak wrote as poison or bomb is in the dead-letter topic (a
  bomb with any reason) and never trained; no valid message is there.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream_trainer.workbench.soak.probe import Sample

MIN_SLOPE_WINDOW_S = 10 * 60.0
LIFETIME_SLACK_S = 10.0  # two samples: a process sampled this close to a piece's edge spans it

Offset = tuple[int, int]


@dataclass(frozen=True)
class Tolerance:
    unit: str
    warmup_s: float  # samples this soon after their process started are not judged
    max_slope_per_hour: float
    peak_rel: float  # the last quarter's peak may exceed the second quarter's by this fraction...
    peak_abs: float  # ...plus this much


TOLERANCES: dict[str, Tolerance] = {
    "rss_mib": Tolerance("MiB", 120.0, 20.0, 0.10, 0.0),
    "threads": Tolerance("threads", 60.0, 10.0, 0.0, 4.0),
    "fds": Tolerance("fds", 60.0, 20.0, 0.0, 8.0),
    "consumers": Tolerance("consumers", 60.0, 2.0, 0.0, 0.0),
}
RECORDED_ONLY = ("traces", "step", "reader_restarts")  # recorded and reported, not judged


def theil_sen_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Median of the pairwise slopes of (seconds, value) points, per hour; 0 for fewer than 2 points."""
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1:] if b[0] != a[0]]
    return statistics.median(slopes) * 3600.0 if slopes else 0.0


def judge_series(points: Sequence[tuple[float, float, float]], start_s: float, end_s: float,
                 tol: Tolerance) -> dict[str, Any]:
    """Judge one resource of one worker in one phase; ``points`` are (t_s, up_s, value)."""
    quarter = (end_s - start_s) / 4
    settled = [(t, v) for t, up, v in points if up >= tol.warmup_s]
    second = [v for t, v in settled if start_s + quarter <= t < start_s + 2 * quarter]
    last = [v for t, v in settled if t >= start_s + 3 * quarter]
    half = [(t, v) for t, v in settled if t >= start_s + 2 * quarter]
    out: dict[str, Any] = {"samples": len(settled)}
    if not second or not last:
        out.update(state="not_judged", why="no settled sample in the second or the last quarter")
        return out
    limit = max(second) * (1 + tol.peak_rel) + tol.peak_abs
    out.update(second_quarter_peak=max(second), last_quarter_peak=max(last), peak_limit=round(limit, 2))
    growing = max(last) > limit
    span = half[-1][0] - half[0][0] if len(half) >= 2 else 0.0
    if span >= MIN_SLOPE_WINDOW_S:
        slope = theil_sen_per_hour(half)
        out.update(slope_per_hour=round(slope, 2), max_slope_per_hour=tol.max_slope_per_hour)
        growing = growing or slope > tol.max_slope_per_hour
    else:
        out.update(slope_per_hour=None, why_no_slope=f"second half spans {span:.0f} s < {MIN_SLOPE_WINDOW_S:.0f} s")
    out["state"] = "growing" if growing else "flat"
    return out


def judged(sample: Sample, name: str) -> float | None:
    """The value of ``name`` that is judged: threads less TensorFlow's collective watchdogs."""
    return sample.own_threads if name == "threads" else getattr(sample, name)


def training_since(samples: Iterable[Sample]) -> float:
    """When a process first trained (its step passed the one it started from): its warm-up is
    counted from there, not from its start. A restarted trainer on a loaded machine starts its
    readers and its first step minutes in (the 60-minute run: 20 fds and no consumer until 100 s
    after the start), so counted from the start its start-up would read as growth. ``inf`` (never
    settled) for a process that served a step and never trained; ``-inf`` (its start counts) for
    one that never served the step gauge."""
    first: float | None = None
    for s in sorted(samples, key=lambda s: s.t_s):
        if s.step is None:
            continue
        if first is None:
            first = s.step
        elif s.step > first:
            return s.t_s
    return float("inf") if first is not None else float("-inf")


def segments(start_s: float, end_s: float, partition_changes: Sequence[float]) -> list[tuple[float, float]]:
    """The phase cut where a partition was added: a new reader brings its consumer, threads and sockets."""
    cuts = [start_s, *sorted(c for c in partition_changes if start_s < c < end_s), end_s]
    return list(itertools.pairwise(cuts))


def judge_resources(samples: Sequence[Sample], phases: Sequence[tuple[float, float]],
                    partition_changes: Sequence[float] = ()) -> dict[str, Any]:
    """Per resource: the verdict of every (phase, worker) series and the resource's overall state.

    A series is judged piecewise between the moments a partition was added (``partition_changes``,
    seconds): more partitions mean more readers, each with its librdkafka consumer, threads and
    sockets, which is growth by design; within a piece the count of partitions is fixed and
    anything that grows is a leak. A piece starts with its own warm-up.
    """
    out: dict[str, Any] = {}
    # A process that serves the watchdog gauge and misses one scrape (it is exiting: a peer was
    # lost) has no "threads less watchdogs" for that sample; its raw count is not comparable.
    counts_watchdogs = {s.pid for s in samples if s.watchdogs is not None}
    for name, tol in TOLERANCES.items():
        series: dict[str, Any] = {}
        for index, (start, end) in enumerate(phases):
            workers = sorted({s.worker for s in samples if s.phase == index})
            pieces = segments(start, end, partition_changes)
            for worker, (a, b) in itertools.product(workers, pieces):
                mine = [s for s in samples if s.phase == index and s.worker == worker and a <= s.t_s < b]
                pids = list(dict.fromkeys(s.pid for s in mine))  # in the order the processes started
                for pid in pids:
                    trains = training_since(s for s in samples if s.pid == pid and s.phase == index)
                    points = [(s.t_s, min(s.up_s if a == start else min(s.up_s, s.t_s - a), s.t_s - trains),
                               float(v)) for s in mine if s.pid == pid and (v := judged(s, name)) is not None
                              and not (name == "threads" and s.watchdogs is None and pid in counts_watchdogs)]
                    if not points:
                        continue
                    key = (f"phase{index}/worker{worker}" + (f"/from{a / 60:.1f}min" if len(pieces) > 1 else "")
                           + (f"/pid{pid}" if len(pids) > 1 else ""))
                    # One process's lifetime within the piece: its quarters, its warm-up.
                    lo = a if points[0][0] <= a + LIFETIME_SLACK_S else points[0][0]
                    hi = b if points[-1][0] >= b - LIFETIME_SLACK_S else points[-1][0]
                    series[key] = judge_series(points, lo, hi, tol)
        states = {v["state"] for v in series.values()}
        if not series:
            state = "not_recorded"
        elif "growing" in states:
            state = "growing"
        else:
            state = "flat" if "flat" in states else "not_judged"
        out[name] = {"state": state, "unit": tol.unit, "series": series}
    return out


def judge_messages(topic: Iterable[Offset], trained: Counter[Offset], bad: Mapping[Offset, str],
                   dead_letters: Mapping[Offset, str], duplicate_bound: int) -> dict[str, Any]:
    """Skipped, duplicates, and what the dead-letter topic holds, against what the soak produced.

    ``topic``: every valid-or-not data offset the topic holds; ``bad``: the offsets the soak wrote
    as poison or bomb (offset -> kind); ``dead_letters``: offset -> reason from the dead-letter topic.
    """
    offsets = set(topic)
    valid = offsets - set(bad)
    skipped = sorted(valid - set(trained))
    valid_dead = sorted(set(dead_letters) - set(bad))
    bad_missing = sorted(set(bad) - set(dead_letters))
    bad_trained = sorted(set(bad) & set(trained))
    unknown = sorted(set(trained) - offsets)
    duplicates = sum(n - 1 for n in trained.values())
    reasons = Counter(f"{bad[o]}:{dead_letters[o]}" for o in set(bad) & set(dead_letters))
    return {"topic_offsets": len(offsets), "valid_offsets": len(valid), "trained_offsets": len(trained),
            "skipped": len(skipped), "skipped_first": skipped[:20],
            "duplicates": duplicates, "duplicate_bound": duplicate_bound,
            "bad_produced": len(bad), "bad_dead_lettered": len(set(bad) & set(dead_letters)),
            "bad_not_dead_lettered": len(bad_missing), "bad_not_dead_lettered_first": bad_missing[:20],
            "bad_trained": len(bad_trained), "valid_dead_lettered": len(valid_dead),
            "valid_dead_lettered_first": valid_dead[:20], "trained_not_in_topic": len(unknown),
            "trained_not_in_topic_first": unknown[:20], "dead_letter_reasons": dict(sorted(reasons.items()))}


def duplicate_failures(duplicates: Mapping[str, Any]) -> list[str]:
    """What ``duplicates.attribute`` found that the design does not allow (module docstring there)."""
    out = []
    if duplicates["same_process"]:
        out.append(f"{duplicates['same_process']} offsets trained twice by one process "
                   f"(first {duplicates['same_process_first'][:3]})")
    for r in duplicates["restarts"]:
        if r["since_checkpoint"] > r["since_checkpoint_bound"]:
            out.append(f"{r['run']}: {r['since_checkpoint']} rows trained again since its last checkpoint, over "
                       f"the bound {r['since_checkpoint_bound']} (E x B x workers)")
    return out


def verdict(resources: Mapping[str, Any], messages: Mapping[str, Any], problems: Sequence[str],
            duplicates: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pass only when no resource grows, nothing is skipped or lost, duplicates stay in the bound.

    With ``duplicates`` (the per-restart attribution) the duplicates are judged restart by
    restart and by cause instead of against the one total bound in ``messages``."""
    failures = [f"{name} grows" for name, r in resources.items() if r["state"] == "growing"]
    checks = [("skipped", messages["skipped"] == 0),
              ("duplicates over the bound", duplicates is not None
               or messages["duplicates"] <= messages["duplicate_bound"]),
              ("valid messages dead-lettered", messages["valid_dead_lettered"] == 0),
              ("poison or bombs not dead-lettered", messages["bad_not_dead_lettered"] == 0),
              ("poison or bombs trained", messages["bad_trained"] == 0),
              ("trained offsets the topic does not hold", messages["trained_not_in_topic"] == 0)]
    failures += [what for what, ok in checks if not ok]
    if duplicates is not None:
        failures += duplicate_failures(duplicates)
    failures += list(problems)
    return {"passed": not failures, "failures": failures}
