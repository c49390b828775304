"""The scale-out scenario's outputs: images/s per worker count, scaling efficiency, vote time.

With ``--cores-per-worker`` (the JSON has ``placement``): per-core efficiency with the replay
store as configured and without it, and per step the vote, the gradient all-reduce timed on its
own, and the step time a multi-worker step adds over one worker's.
"""

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


def per_core_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per replay mode and worker count: the per-core table's numbers, in base units."""
    modes = [("as configured", results["jobs"], results["efficiency"], results.get("rows_efficiency", {}))]
    if "replay_off" in results:
        off = results["replay_off"]
        modes.append(("off", off["jobs"], off["efficiency"], off.get("rows_efficiency", {})))
    allreduce = results.get("gradient_allreduce", {})
    rows = []
    for replay, jobs, eff, rows_eff in modes:
        one = jobs.get("1")
        for n in sorted(int(k) for k in jobs):
            j = jobs[str(n)]
            rows.append({"replay": replay, "workers": n, "fresh_images_per_s": j["fresh_images_per_s"],
                         "rows_per_s": j["rows_per_s"], "steps_per_s": j["steps_per_s"], "step_s": j["step_s_mean"],
                         "vote_s_per_step": j["collective_s_per_step"],
                         "allreduce_s": allreduce[str(n)]["median_s"] if str(n) in allreduce else None,
                         # The step's all-reduce and the wait in it for the slower peer, together.
                         "step_added_s": j["step_s_mean"] - one["step_s_mean"] if one and n > 1 else None,
                         "efficiency": eff.get(str(n)), "rows_efficiency": rows_eff.get(str(n)),
                         "peak_rss_mib": j["peak_rss_mib"]})
    return rows


def _ms(x: float | None) -> str:
    return "-" if x is None else cut(1000 * x, 2)


def _ratio(x: float | None) -> str:
    return "-" if x is None else cut(x, 3)


def per_core_markdown(results: dict[str, Any]) -> str:
    w, place, jobs = results["workload"], results["placement"], results["jobs"]
    counts = sorted(int(n) for n in jobs)
    k = place["cores_per_worker"]
    ar = results.get("gradient_allreduce", {})
    lines = [*header(results),
             f"Workload: {w['messages']} messages ({w['distinct_images']} distinct {w['message_image_px']} px pets) "
             f"in {w['partitions']} partitions, read from the start by every job; {w['image_size']} px, batch "
             f"{w['batch_size_per_worker']} per worker; replay store {w['replay_size_mib']:g} MiB as configured; "
             f"rates over a {cut(jobs[str(counts[0])]['window_s'], 1)} s steady window from each worker's /metrics.  ",
             f"Placement: each worker on its own {k} core{'s' if k > 1 else ''} "
             f"({'; '.join(f'worker {i}: {c}' for i, c in enumerate(place['workers']))}; the 1-worker baseline "
             f"on worker 0's), TF_NUM_INTRAOP_THREADS = TF_NUM_INTEROP_THREADS = decode_threads = {k}; "
             f"{place['shared']}.",
             "",
             "| replay | workers | fresh images/s | rows/s | steps/s | step ms | vote ms/step | gradient all-reduce ms "
             "| step ms added vs 1 worker | per-core efficiency | rows efficiency | peak RSS per worker (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in per_core_rows(results):
        lines.append(f"| {r['replay']} | {r['workers']} | {fmt(r['fresh_images_per_s'])} | {fmt(r['rows_per_s'])} | "
                     f"{cut(r['steps_per_s'], 3)} | {_ms(r['step_s'])} | {_ms(r['vote_s_per_step'])} | "
                     f"{_ms(r['allreduce_s'])} | {_ms(r['step_added_s'])} | {_ratio(r['efficiency'])} | "
                     f"{_ratio(r['rows_efficiency'])} | {', '.join(str(x) for x in r['peak_rss_mib'])} |")
    lines += ["", f"Per-core efficiency: fresh images/s of N workers / (N x those of one worker on the same {k} "
              "core(s)); rows efficiency the same with fresh + replayed rows. Vote: the per-step all-reduce every "
              "worker joins before it steps (`stream_trainer_collective_seconds`). "
              + "".join(f"Gradient all-reduce: the step's all-reduce of the gradients, timed on its own by N "
                        f"processes on the workers' cores (median of {a['rounds']} rounds of "
                        f"{cut(a['payload_bytes'] / 1e6, 2)} MB in {a['tensors']} float32 tensors). "
                        for a in list(ar.values())[:1])
              + "Step ms added: a multi-worker step's mean minus one worker's: the gradient all-reduce and "
              "the wait in it for the slower peer."]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any]) -> str:
    if "placement" in results:
        return per_core_markdown(results)
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
    if "placement" in results:
        per_core_chart(results, path)
        return
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


def per_core_chart(results: dict[str, Any], path: Path) -> None:
    rows = per_core_rows(results)
    modes = list(dict.fromkeys(r["replay"] for r in rows))
    counts = sorted({r["workers"] for r in rows})
    fig, (rates, times) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(modes)
    for m, mode in enumerate(modes):
        got = {r["workers"]: r for r in rows if r["replay"] == mode}
        xs = [i + (m - (len(modes) - 1) / 2) * width for i in range(len(counts))]
        fresh = [got[n]["fresh_images_per_s"] for n in counts]
        rates.bar(xs, fresh, width, label=f"replay {mode}")
        if 1 in got:
            rates.plot(xs, [got[1]["fresh_images_per_s"] * n for n in counts], "k--", lw=1)
        for x, n, f in zip(xs, counts, fresh, strict=True):
            eff = got[n]["efficiency"]
            rates.text(x, f, fmt(f) + ("" if eff is None else f"\n({cut(eff, 2)})"), ha="center", va="bottom",
                       fontsize=7)
    rates.set_xticks(range(len(counts)), [f"{n} x {results['placement']['cores_per_worker']} cores" for n in counts])
    rates.set_ylabel("fresh images/s, whole job (dashed: N x one worker)")
    rates.set_title("Throughput (per-core efficiency in brackets)", fontsize=10)
    rates.set_ylim(0, rates.get_ylim()[1] * 1.15)
    rates.legend(fontsize=8, loc="upper left")
    multi = [r for r in rows if r["workers"] > 1]
    xs = list(range(len(multi)))
    for offset, (key, label, colour) in enumerate([("vote_s_per_step", "vote", "#e6550d"),
                                                   ("allreduce_s", "gradient all-reduce (alone)", "#3182bd"),
                                                   ("step_added_s", "step added vs 1 worker", "#fdae6b")]):
        times.bar([x + (offset - 1) * 0.27 for x in xs], [1000 * (r[key] or 0.0) for r in multi], 0.27,
                  color=colour, label=label)
    times.set_xticks(xs, [f"{r['workers']} workers\nreplay {r['replay']}" for r in multi], fontsize=8)
    times.set_ylabel("ms per step")
    times.set_title("What distribution costs per step", fontsize=10)
    times.set_ylim(0, times.get_ylim()[1] * 1.3)
    times.legend(fontsize=8, loc="upper left", ncols=3)
    fig.suptitle(textwrap.fill(f"stream-trainer bench (scale-out, per core): {results['placement']['shared']}",
                               150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
