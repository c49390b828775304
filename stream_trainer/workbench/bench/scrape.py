"""A trainer's /metrics text as the numbers the scale-out bench needs, and rates between two scrapes.

Pure functions: the bench scrapes, these read. Counters and histogram sums only ever grow, so a
rate is the difference of two samples over the seconds between them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# Field -> exposed sample name (metrics.py defines them; every sample carries a ``worker`` label).
_SAMPLES = {
    "images": "stream_trainer_images_trained_total",
    "replayed": "stream_trainer_images_replayed_total",
    "steps": "stream_trainer_steps_total",
    "idle_steps": "stream_trainer_idle_steps_total",
    "skipped_steps": "stream_trainer_skipped_steps_total",
    "collective_sum": "stream_trainer_collective_seconds_sum",
    "collective_count": "stream_trainer_collective_seconds_count",
    "step_sum": "stream_trainer_step_duration_seconds_sum",
    "step_count": "stream_trainer_step_duration_seconds_count",
    "wait_sum": "stream_trainer_input_wait_seconds_sum",
}


@dataclass(frozen=True)
class WorkerSample:
    """One scrape of one worker; a missing sample reads 0."""

    worker: str = ""
    images: float = 0.0
    replayed: float = 0.0
    steps: float = 0.0
    idle_steps: float = 0.0
    skipped_steps: float = 0.0
    collective_sum: float = 0.0
    collective_count: float = 0.0
    step_sum: float = 0.0
    step_count: float = 0.0
    wait_sum: float = 0.0


def parse_metrics(text: str) -> WorkerSample:
    """The samples the bench uses from one Prometheus text exposition."""
    by_name = {name: field for field, name in _SAMPLES.items()}
    values: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in by_name:
                values[by_name[s.name]] = values.get(by_name[s.name], 0.0) + float(s.value)
                values["worker"] = s.labels.get("worker", "")
    return WorkerSample(**values)


def _delta(before: WorkerSample, after: WorkerSample) -> dict[str, float]:
    return {f.name: getattr(after, f.name) - getattr(before, f.name) for f in fields(WorkerSample)
            if f.name != "worker"}


def job_rates(before: list[WorkerSample], after: list[WorkerSample], seconds: float) -> dict[str, Any]:
    """A job's rates over one window, from every worker's scrape at its start and its end.

    Fresh images and replayed rows add up over workers; steps are the job's (every worker joins
    every step, so worker 0's count is the job's). The vote (the per-step collective
    ``MultiWorkers.vote`` times) is per worker, averaged; its count includes rounds in which
    nobody stepped. The step duration includes the gradient all-reduce of a multi-worker step.
    """
    deltas = [_delta(b, a) for b, a in zip(before, after, strict=True)]
    steps = deltas[0]["steps"]
    fresh = sum(d["images"] for d in deltas)
    replayed = sum(d["replayed"] for d in deltas)
    votes = [d for d in deltas if d["collective_count"] > 0]
    return {
        "fresh_images_per_s": fresh / seconds,
        "replayed_rows_per_s": replayed / seconds,
        "rows_per_s": (fresh + replayed) / seconds,
        "steps_per_s": steps / seconds,
        "collective_s_per_step": (sum(d["collective_sum"] for d in votes) / len(votes) / steps
                                  if votes and steps else 0.0),
        "collective_s_per_vote": (sum(d["collective_sum"] / d["collective_count"] for d in votes) / len(votes)
                                  if votes else 0.0),
        "step_s_mean": (sum(d["step_sum"] for d in deltas) / sum(d["step_count"] for d in deltas)
                        if any(d["step_count"] for d in deltas) else 0.0),
        "idle_steps": sum(d["idle_steps"] for d in deltas),
        "skipped_steps": deltas[0]["skipped_steps"],
        "per_worker": [{"worker": a.worker, **d} for a, d in zip(after, deltas, strict=True)],
    }
