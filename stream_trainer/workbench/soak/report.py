"""The chaos soak's figure and its printed verdict.

One panel per resource (RSS, threads less TensorFlow's collective watchdogs with the raw count
faint behind, open fds, librdkafka consumers, tf.function traces, step)
over time, one line per worker, every fault a labelled vertical line, every phase change a thick
one; a resource the trainer does not serve is drawn as an empty panel saying so.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream_trainer.workbench.soak.judge import judged
from stream_trainer.workbench.soak.probe import Sample

PANELS = (("rss_mib", "RSS (MiB)"), ("threads", "threads less TF's\ncollective watchdogs\n(faint: all)"),
          ("fds", "open fds"), ("consumers", "librdkafka consumers"), ("traces", "tf.function traces"),
          ("step", "global step"))
SHORT = {"broker_kill": "broker kill", "broker_pause": "broker pause", "poison_burst": "poison",
         "bomb_burst": "bombs", "transactional_producer": "txn producer", "partitions_added": "+partition",
         "eval_topic_emptied": "eval emptied", "dead_letter_unwritable": "DLQ gone", "trainer_kill": "trainer kill"}


def plot(samples: Sequence[Sample], faults: Sequence[dict[str, Any]], phases: Sequence[tuple[float, float]],
         exits: Sequence[dict[str, Any]], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), 1, figsize=(12, 2.2 * len(PANELS) + 1), dpi=100, sharex=True)
    series = sorted({(s.phase, s.worker) for s in samples})
    colors = {0: "tab:blue", 1: "tab:orange", 2: "tab:green", 3: "tab:red"}
    for ax, (field, label) in zip(axes, PANELS, strict=True):
        drawn = False
        for phase, worker in series:
            pts = [(s.t_s / 60, v) for s in samples if s.phase == phase and s.worker == worker
                   and (v := judged(s, field)) is not None]
            raw = [(s.t_s / 60, v) for s in samples if s.phase == phase and s.worker == worker
                   and (v := getattr(s, field)) is not None]
            if field == "threads" and raw != pts:  # the raw count, TensorFlow's watchdogs included
                ax.plot(*zip(*raw, strict=True), ".", ms=1.5, color=colors.get(worker, "k"), alpha=0.25)
            if pts:
                drawn = True
                ax.plot(*zip(*pts, strict=True), ".", ms=2.5, color=colors.get(worker, "k"),
                        label=f"worker {worker}" if phase == series[-1][0] else None)
        if not drawn:
            ax.text(0.5, 0.5, "not served by this trainer (null)", transform=ax.transAxes, ha="center",
                    color="0.5")
        state = result.get("resources", {}).get(field, {}).get("state")
        ax.set_ylabel(label + (f"\n{state}" if state else ""), fontsize=8)
        ax.grid(alpha=0.3)
        for f in faults:
            ax.axvline(f["t_s"] / 60, color="tab:red" if f["ok"] else "k", lw=0.7, alpha=0.6)
        for start, _ in phases[1:]:
            ax.axvline(start / 60, color="k", lw=2.5)
        for e in exits:
            if e["cause"] != "stop":
                ax.axvline(e["t_s"] / 60, color="tab:purple", lw=0.6, ls=":")
    top = axes[0]
    for f in faults:
        top.annotate(SHORT.get(f["kind"], f["kind"]), (f["t_s"] / 60, 1.0), xycoords=("data", "axes fraction"),
                     rotation=60, fontsize=7, ha="left", va="bottom")
    axes[-1].set_xlabel("minutes (red: faults, dotted purple: trainer exits, black: phase change)")
    if series:
        axes[0].legend(loc="lower right", fontsize=7)
    failures = "; ".join(result["verdict"]["failures"])
    verdict = "PASSED" if result["verdict"]["passed"] else "FAILED: " + textwrap.shorten(failures, 110)
    m = result["messages"]
    fig.suptitle(f"stream-trainer chaos soak, {result['minutes']:g} min, workers {result['workers']}: {verdict}\n"
                 f"{m['skipped']} skipped of {m['valid_offsets']}, {m['duplicates']} duplicates "
                 f"(bound {m['duplicate_bound']}), {m['valid_dead_lettered']} valid dead-lettered, "
                 f"{len(faults)} faults, {result['restarts']} job restarts", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def lines(result: dict[str, Any]) -> list[str]:
    """The verdict as the soak prints it."""
    m = result["messages"]
    out = [f"soak: {result['minutes']:g} min, workers {result['workers']}, seed {result['seed']}, "
           f"{len(result['faults'])} faults ({sum(1 for f in result['faults'] if f['ok'])} injected), "
           f"{result['restarts']} job restarts, exits {result['exit_causes']}"]
    for name, r in result["resources"].items():
        detail = ", ".join(
            f"{key}: peak {s.get('second_quarter_peak')}->{s.get('last_quarter_peak')} (limit {s.get('peak_limit')})"
            + (f", slope {s['slope_per_hour']:+g}/h" if s.get("slope_per_hour") is not None else "")
            for key, s in r["series"].items() if s["state"] != "not_judged")
        out.append(f"soak: {name}: {r['state']}" + (f" ({detail})" if detail else ""))
    out.append(f"soak: {m['topic_offsets']} offsets in the topic, {m['valid_offsets']} valid: {m['skipped']} skipped, "
               f"{m['duplicates']} trained twice (bound {m['duplicate_bound']}); {m['bad_produced']} malformed "
               f"produced, {m['bad_dead_lettered']} dead-lettered, {m['valid_dead_lettered']} valid dead-lettered")
    restarts: dict[int, float] = {}
    for sample in result.get("samples", []):
        if sample.get("reader_restarts") is not None:
            restarts[sample["pid"]] = max(restarts.get(sample["pid"], 0.0), sample["reader_restarts"])
    if restarts:
        out.append(f"soak: Kafka readers restarted or replaced by the stall watchdog: {sum(restarts.values()):g} in "
                   f"{len(restarts)} trainer processes (most in one: {max(restarts.values()):g})")
    for e in result["exits"]:
        if e["cause"] != "stop" or e["code"] != 0:
            said = e.get("error") or (e.get("last_lines") or [""])[-1]
            out.append(f"soak: exit at {e['t_s']:.0f} s, phase {e['phase']} run {e['run']} worker {e['worker']}: "
                       f"code {e['code']}, {e['cause']}" + (f": {said}" if said else ""))
    d = result.get("duplicates")
    if d is not None:
        out.append(f"soak: duplicates by cause: {d['since_checkpoint']} since the last checkpoint, {d['held_back']} "
                   f"held back behind an unhandled message, {d['same_process']} by one process")
        for r in d["restarts"]:
            held = "; ".join(f"p{h['partition']} {h['offsets'][0]}..{h['offsets'][1]} ({h['rows']}) behind "
                             + (", ".join(f"{b['offset']} {b['what']}" for b in h["behind"][:3]) or "?")
                             for h in r["held"])
            causes = ", ".join(f"w{e['worker']} {e['cause']}" for e in r["ended"])
            out.append(f"soak:   {r['run']} ({causes}): {r['duplicates']} = {r['since_checkpoint']} since checkpoint "
                       f"(steps {r['next_run_restored_step']}..{r['last_step']}, bound {r['since_checkpoint_bound']})"
                       f" + {r['held_back']} held back" + (f" [{held}]" if held else ""))
    v = result["verdict"]
    out.append("soak: PASSED" if v["passed"] else "soak: FAILED: " + "; ".join(v["failures"]))
    return out
