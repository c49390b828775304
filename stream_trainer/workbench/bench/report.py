"""The throughput scenario's outputs: ``throughput.json``, ``throughput.png`` and a markdown table.

The JSON holds every run of every contender (the medians are computed from them), the machine
and its load before and after, so a reader can judge the noise. The chart draws images/s and
CPU milliseconds per item per contender and partition count, Kafka's own rates, and the
freshness latency histogram. ``cut`` and ``fmt`` are shared by the other scenarios' reports.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt

DECODERS = ["floor_memory", "pipeline_memory", "floor_live", "pipeline_live", "pipeline_live_confluent"]
READERS = ["raw_consume", "tfio_source", "consumer_source"]
COLOURS = {"floor_memory": "#9ecae1", "pipeline_memory": "#1f77b4", "floor_live": "#fdae6b",
           "pipeline_live": "#e6550d", "pipeline_live_confluent": "#31a354", "raw_consume": "#8c8c8c",
           "tfio_source": "#bdbdbd", "consumer_source": "#74c476"}


def cut(x: float, decimals: int) -> str:
    """``x`` cut (not rounded) to ``decimals``: a table never shows more than was measured."""
    scaled = math.floor(x * 10**decimals) / 10**decimals
    return f"{scaled:,.{decimals}f}"


def fmt(x: float) -> str:
    """Rates: whole units from 100 up, else one or three decimals; always cut, never rounded."""
    if x >= 100:
        return cut(x, 0)
    return cut(x, 1) if x >= 10 else cut(x, 3)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def header(results: dict[str, Any]) -> list[str]:
    """Command, device, machine with its load, versions: the lines every scenario's table starts with."""
    m = results["machine"]
    return [
        f"Command: `{results['command']}`  ",
        f"Device: {m['device']}; {m['nproc']} cores usable, {m['memory_gib']} GiB memory; load average before "
        f"{results['load_average_before']}, after {results['load_average_after']}; {results['seconds']} s  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "  ",
    ]


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    """The targets; a column for ratios per CPU second where any row has one (throughput)."""
    cpu = any("per_cpu_s" in t for t in rows)
    lines = ["| target | measured | required | met |" + (" same ratio per CPU second |" if cpu else ""),
             "|---|---:|---:|---|" + ("---:|" if cpu else "")]
    for t in rows:
        required = "(report)" if t["op"] == "report" else f"{t['op']} {t['required']:g}"
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        extra = (f" {cut(t['per_cpu_s'], 3)} |" if "per_cpu_s" in t else " |") if cpu else ""
        lines.append(f"| {t['name']} | {cut(t['measured'], 3)} | {required} | {met} |{extra}")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results tables, targets and context, as kept in docs/benchmarks.md."""
    c, w, mem = results["contenders"], results["workload"], results["memory"]
    counts = [str(n) for n in w["partition_counts"]]
    lines = [*header(results),
             f"Workload: {w['messages']} messages, mean {cut(w['mean_message_bytes'] / 1000, 1)} KB "
             f"({w['message_image_px']} px JPEG + PNG trimap) in one topic per partition count; pipeline "
             f"{w['image_size']} px, batch {w['batch_size']}, max_batch_wait_ms {w['max_batch_wait_ms']}, "
             f"decode_group {w['decode_group']}, training in {w['precision']}; {results['repeats']} interleaved "
             f"rounds{' after a warm-up round' if results['config']['bench']['warmup_round_messages'] else ''}, "
             f"medians shown (min - max).",
             "",
             "| contender | unit | " + " | ".join(f"{n} p: rate | {n} p: CPU ms/item" for n in counts) + " |",
             "|---|---|" + "---:|---:|" * len(counts)]
    for key in READERS + DECODERS:
        r = c[key]
        cells = []
        for n in counts:
            b = r["by_partitions"][n]
            cells.append(f"{fmt(b['median'])} ({fmt(b['min'])} - {fmt(b['max'])}) | "
                         f"{cut(b['cpu_ms_per_item']['median'], 3)}")
        lines.append(f"| {r['title']} | {r['unit']} | " + " | ".join(cells) + " |")
    lines += ["", "| training | steps/s | images/s | mean input wait ms/step |", "|---|---:|---:|---:|"]
    for key in ("training_live", "training_live_confluent", "training_memory"):
        r = c[key]
        lines.append(f"| {r['title']} ({r['partitions']} partitions) | {cut(r['median'], 3)} "
                     f"({cut(r['min'], 3)} - {cut(r['max'], 3)}) | {fmt(r['images_per_s']['median'])} | "
                     f"{cut(r['mean_input_wait_ms']['median'], 1)} |")
    f = c["freshness"]
    lines += [
        "",
        f"Freshness: producer at {cut(f['rate_messages_per_s'], 1)} msg/s = {f['load']:.0%} of the in-memory "
        f"training rate ({cut(f['capacity_images_per_s'], 1)} images/s); batch {f['batch_size']}, "
        f"max_batch_wait_ms {f['max_batch_wait_ms']}, shuffle_buffer {f['shuffle_buffer']}, replay "
        f"{f['replay']['size_mib']:g} MiB {f['replay']['policy']} (fraction {f['replay']['fraction']:g}); "
        f"{f['steps']} steps, {cut(f['mean_fresh_rows_per_step'], 1)} fresh + "
        f"{cut(f['mean_replayed_rows_per_step'], 1)} replayed rows per step. Latency of {f['counted']} messages: "
        f"p50 {cut(f['p50_s'], 3)} s, p95 {cut(f['p95_s'], 3)} s, p99 {cut(f['p99_s'], 3)} s, "
        f"max {cut(f['max_s'], 3)} s.  ",
        f"Peak RSS of this benchmark process (it also holds every message and the cached batches): "
        f"{mem['trainer_peak_rss_mib']} MiB during training and freshness ({mem['rss_before_training_mib']} MiB "
        f"before them), {mem['process_peak_rss_mib']} MiB overall; the daemon's own: `--workers` scenario.",
        "",
        *precision_lines(results["precision"]),
        "",
        *targets_table(results["targets"]),
    ]
    return "\n".join(lines) + "\n"


def precision_lines(p: dict[str, Any]) -> list[str]:
    """float32 against mixed bfloat16: step rate per round, and IoU per seed after the same images."""
    speed, acc = p["speed"], p.get("accuracy", {})
    policies = [k for k in speed if isinstance(speed[k], dict) and "images_per_s" in speed[k]]
    lines = [f"Precision ({speed['image_size']} px, batch {speed['batch_size']}, {speed['rounds']} rounds of "
             f"{speed['steps']} steps; IoU at {acc.get('image_size', '-')} px after the same images, seeds "
             f"{acc.get('seeds', [])}; auto picks {p['auto_here']['policy']} here):", "",
             "| policy | training images/s | vs float32 (median of rounds) | mean IoU (median of seeds) | per seed |",
             "|---|---:|---:|---:|---|"]
    for policy in policies:
        s = speed[policy]
        a = acc.get(policy)
        ious = ", ".join(cut(r["mean_iou"], 4) for r in a["per_seed"]) if a else ""
        lines.append(f"| {policy} | {fmt(s['images_per_s'])} | {cut(s['vs_float32_median'], 3)} | "
                     f"{cut(a['mean_iou_median'], 4) if a else '-'} | {ious} |")
    if acc:
        first = acc[policies[0]]["per_seed"][0] if policies and policies[0] in acc else {}
        lines.append(f"\n(IoU after {first.get('trained_images', '?')} training images, "
                     f"{first.get('eval_images', '?')} held-out images per seed.)")
    return lines


def _grouped(ax: Any, c: dict[str, Any], keys: list[str], counts: list[str], value: str, title: str,
             ylabel: str, log: bool = False) -> None:
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(counts))]
        stats = [c[key]["by_partitions"][n] if value == "rate" else c[key]["by_partitions"][n][value]
                 for n in counts]
        med = [s["median"] for s in stats]
        err = [[m - s["min"] for m, s in zip(med, stats, strict=True)],
               [s["max"] - m for m, s in zip(med, stats, strict=True)]]
        ax.bar(xs, med, width, yerr=err, capsize=2, color=COLOURS[key], label=c[key]["title"].split(" (")[0])
        for x, m in zip(xs, med, strict=True):
            ax.text(x, m, fmt(m), ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(counts)), [f"{n} partition{'s' if n != '1' else ''}" for n in counts])
    if log:
        ax.set_yscale("log")
    else:  # room above the bars for the legend
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper center")


def chart(results: dict[str, Any], path: Path) -> None:
    """Four panels: decode rates, CPU per item, Kafka read rates, freshness latency histogram."""
    c = results["contenders"]
    counts = [str(n) for n in results["workload"]["partition_counts"]]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    _grouped(axes[0][0], c, DECODERS, counts, "rate", "Decoded images per second (median, whiskers min-max)",
             "images/s")
    _grouped(axes[0][1], c, READERS + DECODERS, counts, "cpu_ms_per_item",
             "Process CPU per message / image (median)", "CPU ms per item")
    _grouped(axes[1][0], c, READERS, counts, "rate", "Kafka read without decoding", "messages/s", log=True)
    f, hist = c["freshness"], axes[1][1]
    hist.hist(f["latencies_s"], bins=40, color="#1f77b4")
    for q, style in (("p50_s", "-"), ("p95_s", "--"), ("p99_s", ":")):
        hist.axvline(f[q], color="black", ls=style, lw=1, label=f"{q[:3]} {cut(f[q], 3)} s")
    hist.set_xlabel("produce -> trained latency (s)")
    hist.set_ylabel("messages")
    live, confluent, mem = c["training_live"], c["training_live_confluent"], c["training_memory"]
    hist.set_title(f"Freshness at {cut(f['rate_messages_per_s'], 1)} msg/s ({f['load']:.0%} load), default "
                   f"batching + replay\ntraining live {fmt(live['images_per_s']['median'])} (tensorflow-io), "
                   f"{fmt(confluent['images_per_s']['median'])} (confluent-kafka) vs memory "
                   f"{fmt(mem['images_per_s']['median'])} images/s", fontsize=10)
    hist.legend(fontsize=8)
    fig.suptitle(f"stream-trainer bench (throughput): {results['workload']['messages']} messages, "
                 f"{results['machine']['device']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
