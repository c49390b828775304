"""The learning scenario's outputs: the forgetting table and the IoU curves over fresh images."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stream_trainer.workbench.bench.report import cut, fmt, header, targets_table

RUNS = (("without_replay", "without replay", "#d62728"), ("with_replay", "with replay", "#1f77b4"))


def markdown(results: dict[str, Any]) -> str:
    w, cost = results["workload"], results["cost"]
    a, b = results["phases"]
    looks = "; ".join(f"{p['name']}: {p['shape']} {p['pet_colour']} pets on {p['background']}" for p in w["phases"])
    replay = results["config"]["replay"]
    lines = [*header(results),
             f"Stream: {w['train_images'][a]} train images of phase {a}, then {w['train_images'][b]} of {b} "
             f"({looks}), one partition; eval images {w['eval_images'][a]} of {a}, {w['eval_images'][b]} of {b}. "
             f"U-Net {results['config']['model']['base_filters']} filters, depth {results['config']['model']['depth']}"
             f", {w['image_size']} px, batch {w['batch_size']}, {w['precision']}; replay "
             f"{replay['size_mib']:g} MiB {replay['policy']}, fraction {replay['fraction']:g}.",
             "",
             f"| run | fresh images of {a} / {b} | replayed rows | steps | peak IoU on {a} | IoU on {a} after {b} | "
             f"IoU on {b} after {a} | IoU on {b} after {b} |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, title, _ in RUNS:
        r = results["runs"][key]
        lines.append(f"| {title} | {r['a_images']} / {r['b_images']} | {r['replayed']} | {r['steps']} | "
                     f"{cut(r['a_peak'], 3)} | {cut(r['a_after_b'], 3)} | {cut(r['b_after_a'], 3)} | "
                     f"{cut(r['b_after_b'], 3)} |")
    plain = results["runs"]["without_replay"]
    lines += ["",
              f"Phase {a} {'plateaued' if plain['a_plateau_reached'] else 'did not plateau (its images ran out)'} "
              f"after {plain['a_images']} fresh images in the run without replay; both runs trained that many of "
              f"{a}, then as many of {b}.  ",
              f"Replay's cost at batch {cost['batch_size']}: {cost['rounds']} interleaved rounds of {cost['steps']} "
              f"steps, {fmt(statistics.median(cost['with_replay_steps_per_s']))} steps/s with replay, "
              f"{fmt(statistics.median(cost['without_replay_steps_per_s']))} without (per-round ratios "
              f"{', '.join(cut(x, 3) for x in cost['ratio']['rounds'])}). Store: {cost['store_capacity']} members in "
              f"{cut(cost['store_bytes'] / 2**20, 1)} MiB allocated at start (configured {cost['configured_mib']:g} "
              f"MiB).",
              "",
              *targets_table(results["targets"])]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """IoU on A and on B over fresh images, with and without replay; the switch to B marked."""
    a, b = results["phases"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, phase in zip(axes, (a, b), strict=True):
        for key, title, colour in RUNS:
            r = results["runs"][key]
            xs = [e["images"] for e in r["evals"]]
            ax.plot(xs, [e[phase] for e in r["evals"]], marker="o", ms=3, color=colour, label=title)
        switch = results["runs"]["without_replay"]["a_images"]
        ax.axvline(switch, color="grey", ls="--", lw=1, label=f"stream switches to {b}")
        ax.set_xlabel("fresh images trained")
        ax.set_title(f"eval mean IoU on phase {phase}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    peak = results["runs"]["with_replay"]["a_peak"]
    axes[0].axhline(peak - 0.05, color="#1f77b4", ls=":", lw=1)
    axes[0].text(0, peak - 0.05, " peak - 0.05 (with replay)", fontsize=7, va="bottom", color="#1f77b4")
    axes[0].set_ylabel("mean IoU (3 trimap classes)")
    fig.suptitle(f"stream-trainer bench (learning): forgetting {a} while training {b}; "
                 f"{results['machine']['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
