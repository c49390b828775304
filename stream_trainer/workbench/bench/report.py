"""The benchmark's outputs: ``results.json``, ``results.png`` and a markdown table.

The JSON holds every run of every contender (the medians are computed from them), the machine
and its load before and after, so a reader can judge the noise. The chart draws throughput bars
with both limits as lines, and the freshness latency histogram with its percentiles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt  # noqa: E402

# Throughput bars in this order; training rows are drawn in images/s.
_BARS = ["raw_consume", "tfio_source", "pipeline", "in_memory", "naive", "tfio_tutorial"]


def _down(x: float, decimals: int) -> str:
    """``x`` cut (not rounded) to ``decimals``: a table never shows more than was measured."""
    scaled = math.floor(x * 10**decimals) / 10**decimals
    return f"{scaled:,.{decimals}f}"


def _fmt(x: float) -> str:
    """Throughputs: whole units from 100 up, else one or three decimals; always cut, never rounded."""
    if x >= 100:
        return _down(x, 0)
    return _down(x, 1) if x >= 10 else _down(x, 3)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def markdown(results: dict[str, Any]) -> str:
    """The results table, targets and context, as kept in docs/benchmarks.md."""
    c = results["contenders"]
    m, w, mem = results["machine"], results["workload"], results["memory"]
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {m['nproc']} cores usable ({m['cpu_model'] or 'unknown CPU'}), {m['memory_gib']} GiB memory; "
        f"load average before {results['load_average_before']}, after {results['load_average_after']}  ",
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "  ",
        f"Workload: {w['messages']} messages, mean {_down(w['mean_message_bytes'] / 1000, 1)} KB "
        f"({w['message_image_px']} px JPEG + PNG trimap), {w['partitions']} partitions; "
        f"pipeline {w['image_size']} px, batch {w['batch_size']}, shuffle buffer {w['shuffle_buffer']}; "
        f"{results['repeats']} repeats after a warm-up round, median shown.",
        "",
        "| # | contender | median | unit | runs (min - max) | MB/s |",
        "|---|---|---:|---|---|---:|",
    ]
    for i, key in enumerate(_BARS, 1):
        r = c[key]
        mb = _fmt(r["mb_per_s"]["median"]) if "mb_per_s" in r else ""
        lines.append(f"| {i} | {r['title']} | {_fmt(r['median'])} | {r['unit']} | "
                     f"{_fmt(r['min'])} - {_fmt(r['max'])} | {mb} |")
    for key in ("training_live", "training_memory"):
        r = c[key]
        ips, wait = r["images_per_s"], _down(r["mean_input_wait_ms"]["median"], 1)
        lines.append(f"| 7 | {r['title']} | {_down(r['median'], 3)} | steps/s | "
                     f"{_down(r['min'], 3)} - {_down(r['max'], 3)} | |")
        lines.append(f"|   | ... same, images/s (mean input wait {wait} ms/step) | {_fmt(ips['median'])} | images/s | "
                     f"{_fmt(ips['min'])} - {_fmt(ips['max'])} | |")
    f = c["freshness"]
    pct = " / ".join(f"{q} {_down(f[q + '_s'], 3)}" for q in ("p50", "p95", "p99"))
    lines.append(f"| 8 | {f['title']} | {pct} | s | max {_down(f['max_s'], 3)} ({f['counted']} messages) | |")
    lines += [
        "",
        f"Freshness: producer at {_down(f['rate_messages_per_s'], 1)} msg/s = {f['load']:.0%} of the in-memory "
        f"training rate ({_down(f['capacity_images_per_s'], 1)} images/s), shuffle buffer {f['shuffle_buffer']} "
        f"(the trainer's {f['trainer_shuffle_buffer']} would add ~{_down(f['trainer_shuffle_wait_estimate_s'], 1)} "
        f"s at this rate), batch {f['batch_size']}.  ",
        f"Peak RSS of `stream-trainer run` (child process, {mem['daemon']['steps']} steps on the benchmark "
        f"topic): {mem['daemon']['peak_rss_mib']} MiB. This benchmark process, which also holds the messages "
        f"and cached batches: {mem['trainer_peak_rss_mib']} MiB during training and freshness "
        f"({mem['rss_before_training_mib']} MiB before them), {mem['process_peak_rss_mib']} MiB overall.",
        "",
        "| target | measured | required | met |",
        "|---|---:|---:|---|",
    ]
    for t in results["targets"]:
        lines.append(f"| {t['name']} | {_down(t['measured'], 3)} | {t['op']} {t['required']:g} | "
                     f"{'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    """Throughput bars (log scale, min-max whiskers, limits as lines) and the latency histogram."""
    c = results["contenders"]
    fig, (bars, hist) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    rows = [(c[k]["title"].split(" (")[0], c[k]["median"], c[k]["min"], c[k]["max"], c[k]["unit"]) for k in _BARS]
    for k in ("training_live", "training_memory"):
        ips = c[k]["images_per_s"]
        rows.append((c[k]["title"].split(" (")[0], ips["median"], ips["min"], ips["max"], "images/s"))
    labels = [f"{name}\n[{unit}]" for name, *_rest, unit in rows]
    medians = [r[1] for r in rows]
    err = [[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]]
    colors = ["#8c8c8c", "#8c8c8c", "#1f77b4", "#8c8c8c", "#d62728", "#ff7f0e", "#2ca02c", "#98df8a"]
    y = range(len(rows))
    bars.barh(list(y), medians, xerr=err, color=colors, capsize=3)
    for yi, row in zip(y, rows, strict=True):
        bars.text(row[3] * 1.1, yi, _fmt(row[1]), va="center", fontsize=8)  # right of the max whisker
    bars.axvline(c["raw_consume"]["median"], ls="--", color="black", lw=1, label="raw consume limit")
    bars.axvline(c["in_memory"]["median"], ls=":", color="purple", lw=1.5, label="in-memory decode limit")
    bars.set_xscale("log")
    bars.set_yticks(list(y), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("items per second (median of runs; whiskers: min-max)")
    bars.legend(loc="lower right", fontsize=8)
    bars.set_title("Throughput: messages or images per second")

    f = c["freshness"]
    hist.hist(f["latencies_s"], bins=40, color="#1f77b4")
    for q, style in (("p50_s", "-"), ("p95_s", "--"), ("p99_s", ":")):
        hist.axvline(f[q], color="black", ls=style, lw=1, label=f"{q[:3]} {_down(f[q], 3)} s")
    hist.set_xlabel("produce -> trained latency (s)")
    hist.set_ylabel("messages")
    hist.set_title(f"Freshness at {_down(f['rate_messages_per_s'], 1)} msg/s ({f['load']:.0%} load), "
                   f"shuffle buffer {f['shuffle_buffer']}", fontsize=10)
    hist.legend(fontsize=8)
    fig.suptitle(f"stream-trainer bench: {results['workload']['messages']} messages, "
                 f"{results['machine']['nproc']} cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
