"""The memory scenario's outputs: RSS and threads per phase, per partition count and reader; RSS over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stream_trainer.workbench.bench.report import cut, header

# Phase key -> column title, in the order a run goes through them.
PHASES = {
    "tensorflow_imported": "TensorFlow imported",
    "model_optimizer_replay": "model, optimizer, replay store",
    "readers_and_baseline_eval": "readers started, baseline eval (eval cache)",
    "first_step": "first step",
    "training": "training, inbox full (median)",
    "evaluation": "evaluation",
    "checkpoint": "checkpoint",
    "export": "export",
}
# Event -> (marker, label) on the chart.
MARKERS = {"tensorflow": ("o", "TensorFlow imported"), "readers": ("s", "readers started"),
           "baseline_eval": ("D", "baseline eval done"), "first_step": ("^", "first step"),
           "inbox_full": ("v", "inbox full"), "step_n": ("P", "step N: eval starts"),
           "eval_n": ("X", "eval done"), "checkpoint": ("*", "checkpoint written"), "export": ("h", "export written")}


def markdown(results: dict[str, Any]) -> str:
    w, mc = results["workload"], results["config"]["memory"]
    env = ", ".join(f"{k}={v}" for k, v in mc["env"].items()) or "none"
    beyond = (f" (partitions {mc['backlog_full_partitions']} and up: {w['backlog_mib_beyond']} MiB, "
              f"{w['backlog_messages_beyond']} messages)" if w.get("backlog_messages_beyond") else "")
    lines = [*header(results),
             f"Workload: one `stream-trainer run` process per row against a pre-filled backlog of "
             f"{w['backlog_mib_per_partition']} MiB ({w['backlog_messages_per_partition']} messages of "
             f"{w['message_bytes_mean']} B) in each partition it reads"
             f"{beyond}; eval topic of {w['eval_images']} images; "
             f"{w['image_size']} px, batch {w['batch_size']}; evaluation, checkpoint and export at step "
             f"{mc['steps']}; extra environment: {env}; kafka.client: {results['config']['kafka_client'] or '{}'}. "
             f"RSS = VmRSS of the trainer sampled every {mc['sample_every_s']} s; each phase lies between two "
             f"events the trainer makes observable (bench/memory.py); MiB, peak within the phase unless noted.  "]
    for reader, by_n in results["runs"].items():  # a table per reader
        lines += ["", f"Reader: {reader}", "",
                  "| reader | partitions | " + " | ".join(PHASES.values()) + " | peak (VmHWM) | threads in training |",
                  "|---|---:|" + "---:|" * (len(PHASES) + 2)]
        for n in sorted(by_n, key=int):
            r = by_n[n]
            cells = [cut(r["phases"][k]["rss_mib"], 0) for k in PHASES]
            lines.append(f"| {reader} | {n} | " + " | ".join(cells) +
                         f" | **{cut(r['peak_rss_mib'], 0)}** | {r['phases']['training']['threads']} |")
    lines += ["", "Anonymous memory (heap, stacks, tensors, queues: the process's own) and file-backed memory "
              "(mapped shared libraries, mostly TensorFlow's: shared between processes and reclaimable) of the same "
              "samples, MiB:", "",
              "| reader | partitions | TensorFlow imported: anon / file | training: anon / file | "
              "export: anon / file |", "|---|---:|---:|---:|---:|"]
    for reader, by_n in results["runs"].items():
        for n in sorted(by_n, key=int):
            ph = by_n[n]["phases"]
            cells = [f"{cut(ph[k]['anon_mib'], 0)} / {cut(ph[k]['file_mib'], 0)}"
                     for k in ("tensorflow_imported", "training", "export")]
            lines.append(f"| {reader} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "Per additional partition (least-squares slope over the partition counts):", "",
              "| reader | training RSS MiB | peak RSS MiB | threads |", "|---|---:|---:|---:|"]
    for reader, cost in results["per_partition"].items():
        if cost:
            lines.append(f"| {reader} | {cut(cost['training_rss_mib'], 1)} | {cut(cost['peak_rss_mib'], 1)} | "
                         f"{cut(cost['threads'], 1)} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    readers = list(results["runs"])
    fig, axes = plt.subplots(2, len(readers), figsize=(7 * len(readers) + 4, 7.5), squeeze=False, sharex="col")
    colours = plt.get_cmap("viridis")
    for col, reader in enumerate(readers):
        rss, threads = axes[0][col], axes[1][col]
        by_n = results["runs"][reader]
        ns = sorted(by_n, key=int)
        for i, n in enumerate(ns):
            r = by_n[n]
            colour = colours(i / max(1, len(ns) - 1) * 0.85)
            samples = [s for s in r["samples"] if s["rss_mib"] > 0]
            ts = [s["t_s"] for s in samples]
            rss.plot(ts, [s["rss_mib"] for s in samples], color=colour, lw=1.4, label=f"{n} partition(s)")
            threads.plot(ts, [s["threads"] for s in samples], color=colour, lw=1.4, label=f"{n} partition(s)")
            for event, t in r["events"].items():
                at = min(samples, key=lambda s: abs(s["t_s"] - t)) if samples else None
                if at is not None:
                    marker, _ = MARKERS[event]
                    rss.plot([at["t_s"]], [at["rss_mib"]], marker=marker, color=colour, ms=8, mec="black", mew=0.6)
        for marker, label in MARKERS.values():  # a legend entry per event, drawn off the data
            rss.plot([], [], marker=marker, ls="", color="white", mec="black", label=label)
        rss.set_ylabel("trainer RSS (MiB)")
        rss.set_ylim(bottom=0)
        rss.set_title(f"reader: {reader}", fontsize=10)
        rss.grid(alpha=0.3)
        threads.set_ylabel("trainer threads")
        threads.set_xlabel("seconds since the trainer started")
        threads.set_ylim(bottom=0)
        threads.grid(alpha=0.3)
        threads.legend(fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    env = ", ".join(f"{k}={v}" for k, v in results["config"]["memory"]["env"].items())
    fig.suptitle(f"stream-trainer bench (memory): trainer RSS and threads, phases marked by observed events"
                 f"{' (' + env + ')' if env else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
