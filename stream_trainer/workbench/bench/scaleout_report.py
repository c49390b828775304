"""The scale-out scenario's outputs: images/s per worker count, scaling efficiency, vote time."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stream_trainer.workbench.bench.report import cut, fmt, header


def caveat(cores: int, counts: list[int]) -> str:
    """What the numbers can mean on this many cores."""
    if cores <= max(counts):
        return (f"On {cores} cores the workers share the same cores: N workers get {cores}/N each, so this "
                f"measures the overhead of scaling out (collectives, per-process costs), not a speed-up.")
    return f"{cores} cores: every worker gets {cores // max(counts)} or more of its own."


def markdown(results: dict[str, Any]) -> str:
    w, jobs = results["workload"], results["jobs"]
    counts = sorted(int(n) for n in jobs)
    lines = [*header(results),
             f"Workload: {w['messages']} messages ({w['distinct_images']} distinct {w['message_image_px']} px pets) "
             f"in {w['partitions']} partitions, read from the start by every job; {w['image_size']} px, batch "
             f"{w['batch_size_per_worker']} per worker; rates over a {cut(jobs[str(counts[0])]['window_s'], 1)} s "
             f"steady window from each worker's /metrics.  ",
             caveat(w["cores"], counts),
             "",
             "| workers | threads each | fresh images/s | + replayed rows/s | steps/s | step s (mean) | "
             "vote ms/step | efficiency | peak RSS per worker (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for n in counts:
        j = jobs[str(n)]
        eff = results["efficiency"].get(str(n))
        lines.append(f"| {n} | {j['threads_per_worker']} | {fmt(j['fresh_images_per_s'])} | "
                     f"{fmt(j['replayed_rows_per_s'])} | {cut(j['steps_per_s'], 3)} | {cut(j['step_s_mean'], 3)} | "
                     f"{cut(1000 * j['collective_s_per_step'], 2)} | {'-' if eff is None else cut(eff, 3)} | "
                     f"{', '.join(str(x) for x in j['peak_rss_mib'])} |")
    lines += ["", "Efficiency: fresh images/s of N workers / (N x those of one worker). Vote: the per-step "
              "all-reduce every worker joins before it steps (`stream_trainer_collective_seconds`); the gradient "
              "all-reduce is inside the step time."]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    jobs = results["jobs"]
    counts = sorted(int(n) for n in jobs)
    fig, (rates, votes) = plt.subplots(1, 2, figsize=(11, 4.2))
    fresh = [jobs[str(n)]["fresh_images_per_s"] for n in counts]
    replayed = [jobs[str(n)]["replayed_rows_per_s"] for n in counts]
    xs = list(range(len(counts)))
    rates.bar(xs, fresh, color="#1f77b4", label="fresh images/s")
    rates.bar(xs, replayed, bottom=fresh, color="#9ecae1", label="replayed rows/s")
    if counts[0] == 1:
        rates.plot(xs, [fresh[0] * n for n in counts], "k--", lw=1, label="linear scaling of 1 worker")
    for x, f in zip(xs, fresh, strict=True):
        rates.text(x, f / 2, fmt(f), ha="center", color="white", fontsize=8)
    rates.set_xticks(xs, [f"{n} worker{'s' if n > 1 else ''}" for n in counts])
    rates.set_ylabel("per second, whole job")
    rates.set_title("Training throughput", fontsize=10)
    rates.legend(fontsize=8)
    votes.bar(xs, [1000 * jobs[str(n)]["collective_s_per_step"] for n in counts], color="#e6550d",
              label="vote (collective) ms per step")
    votes.bar(xs, [1000 * jobs[str(n)]["step_s_mean"] for n in counts], color="#fdae6b", alpha=0.5,
              label="step ms (incl. gradient all-reduce)")
    votes.set_xticks(xs, [str(n) for n in counts])
    votes.set_xlabel("workers")
    votes.set_title("Time per step", fontsize=10)
    votes.legend(fontsize=8)
    title = f"stream-trainer bench (scale-out): {caveat(results['workload']['cores'], counts)}"
    fig.suptitle(textwrap.fill(title, 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
