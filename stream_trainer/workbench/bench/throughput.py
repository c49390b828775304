"""The default scenario (issue 16): throughput per worker, against the plain-map floors.

The story of one run: encode the same synthetic messages once and produce them into one topic
per partition count; run every contender at every partition count once as a warm-up, then
``repeats`` interleaved rounds (each floor right next to our pipeline on the same messages, the
order reversed every other round, so background load hits them alike); train the same model
fed live and from memory; measure freshness at half the training capacity with the default
batching and replay; compare float32 with mixed bfloat16. (The daemon's own peak RSS is
measured by the scale-out scenario, which runs ``stream-trainer run`` anyway.) Everything lands
in one plain-data dict for ``report``.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from stream_trainer.config import Settings
from stream_trainer.tfenv import CONFLUENT_KAFKA, TENSORFLOW_IO
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench import machine
from stream_trainer.workbench.bench.config import BenchConfig
from stream_trainer.workbench.bench.timing import round_order, summary

log = logging.getLogger(__name__)

TARGET_RATIO = 0.95
READERS = (TENSORFLOW_IO, CONFLUENT_KAFKA)  # trained live with each


def run(settings: Settings, bench: BenchConfig, command: str) -> dict[str, Any]:
    """Every contender against the broker in ``settings``; the results as plain data."""
    # Imported here: TensorFlow takes seconds to load, and config errors should not wait for it.
    from stream_trainer.kafka import Cluster
    from stream_trainer.workbench.bench import freshness, training
    from stream_trainer.workbench.bench import precision as precision_bench
    from stream_trainer.workbench.bench.contenders import CONTENDERS, Context
    from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all

    session = machine.Session()
    p = settings.trainer.pipeline
    ctx = Context(settings, bench)
    cluster = Cluster(settings.kafka, group_id="stream-trainer-bench")
    try:
        cluster.wait_until_reachable()
        log.info("generating %d synthetic %d px pets", bench.messages, bench.message_image_px)
        records = make_records(bench.messages, bench.message_image_px, bench.seed)
        values = encode_all(records)
        workloads = {n: produce_all(cluster, records, values, n) for n in bench.partition_counts}
        log.info("produced %d messages (mean %.1f KB) into %s", bench.messages,
                 sum(map(len, values)) / len(values) / 1000, ", ".join(w.topic for w in workloads.values()))

        for n, w in workloads.items() if bench.warmup_round_messages else []:
            for c in CONTENDERS:  # warm-up: connections, tf.function tracing, the broker's page cache
                t0 = time.monotonic()
                c.run(ctx, w, min(bench.warmup_round_messages, bench.messages))
                log.info("warm-up %-16s %2d partitions %.1f s", c.key, n, time.monotonic() - t0)
        runs: dict[str, dict[int, list[Any]]] = {c.key: {n: [] for n in workloads} for c in CONTENDERS}
        for round_ in range(bench.repeats):
            order = [(n, c) for n in workloads for c in CONTENDERS]
            for n, c in round_order(order, round_):
                tail = 2 * p.batch_size if c.decodes else 0
                rate = c.run(ctx, workloads[n], bench.messages).rate(bench.warmup_messages, tail)
                runs[c.key][n].append(rate)
                log.info("round %d/%d %-16s %2d partitions %9.1f %s, %.3f CPU ms/item", round_ + 1,
                         bench.repeats, c.key, n, rate.items_per_s, c.unit, 1000 * rate.cpu_s_per_item)

        w = workloads[bench.partitions]
        rss_before = machine.rss_mib()
        machine.reset_peak_rss()
        trainer = training.Trainer(settings)
        batches = training.cached_batches(ctx, w)
        training.memory(trainer, batches, 1, 1)  # traces the step outside every timed window
        live_runs: dict[str, list[Any]] = {r: [] for r in READERS}
        memory_runs = []
        for round_ in range(bench.repeats):
            lives, mem = training.live_and_memory(ctx, trainer, w, batches, memory_first=round_ % 2 == 1,
                                                  readers=READERS)
            memory_runs.append(mem)
            for reader, live in lives.items():
                live_runs[reader].append(live)
                log.info("round %d/%d training: live (%s) %.3f steps/s (wait %.1f ms), memory %.3f steps/s",
                         round_ + 1, bench.repeats, reader, live.steps_per_s, 1000 * live.mean_input_wait_s,
                         mem.steps_per_s)
        capacity = statistics.median(r.images_per_s for r in memory_runs)
        fresh = freshness.measure(ctx, trainer, cluster, records, capacity)
        log.info("freshness at %.1f msg/s: p50 %.3f s, p95 %.3f s, p99 %.3f s", fresh["rate_messages_per_s"],
                 fresh["p50_s"], fresh["p95_s"], fresh["p99_s"])
        trainer_peak = machine.peak_rss_mib()
        pc = bench.precision
        log.info("float32 vs mixed bfloat16: step rate and IoU after %d images", pc.train_images)
        precision = precision_bench.measure(
            tuple(pc.policies), image_size=p.image_size, batch_size=p.batch_size, model=settings.trainer.model,
            warmup_steps=pc.warmup_steps, steps=pc.steps, rounds=pc.rounds, accuracy_image_size=pc.image_size,
            train_images=pc.train_images, eval_images=pc.eval_images, seeds=tuple(pc.seeds))
        cluster.admin.delete_topics([x.topic for x in workloads.values()] + [f"{w.topic}-dlq"])
    finally:
        cluster.close()

    contenders: dict[str, Any] = {}
    for c in CONTENDERS:
        contenders[c.key] = {"title": c.title, "unit": c.unit, "by_partitions": {
            str(n): {**summary([r.items_per_s for r in rs]),
                     "cpu_ms_per_item": summary([1000 * r.cpu_s_per_item for r in rs]),
                     **({"mb_per_s": summary([r.bytes_per_s / 1e6 for r in rs])} if c.unit == "messages/s" else {})}
            for n, rs in runs[c.key].items()}}
    for key, title, trs in (
            ("training_live", "training fed live (tensorflow-io reader -> our pipeline -> step)",
             live_runs[TENSORFLOW_IO]),
            ("training_live_confluent", "training fed live (confluent-kafka reader -> our pipeline -> step)",
             live_runs[CONFLUENT_KAFKA]),
            ("training_memory", "training fed from memory (cached batches -> step)", memory_runs)):
        contenders[key] = {
            "title": title, "unit": "steps/s", "partitions": bench.partitions, **summary([r.steps_per_s for r in trs]),
            "images_per_s": summary([r.images_per_s for r in trs]),
            "mean_input_wait_ms": summary([1000 * r.mean_input_wait_s for r in trs]),
            "max_input_wait_ms": summary([1000 * r.max_input_wait_s for r in trs]),
        }
    contenders["freshness"] = {"title": "freshness (produce -> trained latency, default batching and replay)",
                               "unit": "s", **fresh}
    ratios = round_ratios(runs, bench.partition_counts, bench.partitions,
                          [r.steps_per_s for r in live_runs[TENSORFLOW_IO]], [r.steps_per_s for r in memory_runs],
                          [r.steps_per_s for r in live_runs[CONFLUENT_KAFKA]])
    return {
        **session.header("throughput", command),
        "repeats": bench.repeats,
        "workload": {
            "messages": bench.messages, "partition_counts": bench.partition_counts,
            "training_partitions": bench.partitions, "message_image_px": bench.message_image_px,
            "mean_message_bytes": sum(map(len, values)) / len(values), "image_size": p.image_size,
            "batch_size": p.batch_size, "max_batch_wait_ms": p.max_batch_wait_ms, "shuffle_buffer": p.shuffle_buffer,
            "decode_group": p.decode_group, "warmup_messages": bench.warmup_messages, "precision": trainer.policy,
        },
        "config": {"bench": bench_config.as_dict(bench), "trainer": bench_config.as_dict(settings.trainer)},
        "contenders": contenders,
        "ratios": ratios,
        "precision": precision,
        "targets": targets(ratios, contenders, precision, bench.partition_counts, bench.partitions),
        "memory": {"trainer_peak_rss_mib": trainer_peak, "rss_before_training_mib": rss_before,
                   "process_peak_rss_mib": machine.process_peak_rss_mib()},
    }


def per_round(numerators: list[float], denominators: list[float]) -> dict[str, Any]:
    """Ratios of runs made side by side in the same round, and their median.

    Steadier than a ratio of medians on a shared machine: both runs of a round saw the same load.
    """
    rounds = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return {"median": statistics.median(rounds), "rounds": rounds}


def round_ratios(runs: dict[str, dict[int, list[Any]]], counts: list[int], reference: int,
                 live_steps: list[float], memory_steps: list[float],
                 confluent_live_steps: list[float] | None = None) -> dict[str, Any]:
    """Every ratio a target is judged on, from the per-round rates (``Rate`` objects)."""

    def rates(key: str, n: int) -> list[float]:
        return [r.items_per_s for r in runs[key][n]]

    def per_cpu_s(key: str, n: int) -> list[float]:
        # Images per CPU second: what the rate would be with one core kept busy. Its ratio is the
        # rate ratio of a saturated machine, and steadier than rates when others share the cores.
        return [1.0 / r.cpu_s_per_item for r in runs[key][n]]

    out: dict[str, Any] = {}
    for side in ("memory", "live"):
        pipe, floor = f"pipeline_{side}", f"floor_{side}"
        out[f"{pipe}/{floor}"] = {str(n): per_round(rates(pipe, n), rates(floor, n)) for n in counts}
        out[f"{pipe}/{floor} per CPU s"] = {str(n): per_round(per_cpu_s(pipe, n), per_cpu_s(floor, n))
                                            for n in counts}
    first = min(counts)
    if reference != first:
        for side in ("memory", "live"):
            pipe = f"pipeline_{side}"
            out[f"{pipe} {first}p/{reference}p"] = per_round(rates(pipe, first), rates(pipe, reference))
            out[f"{pipe} {first}p/{reference}p per CPU s"] = per_round(per_cpu_s(pipe, first),
                                                                       per_cpu_s(pipe, reference))
    out["training live/memory"] = per_round(live_steps, memory_steps)
    if confluent_live_steps:
        out["training live (confluent-kafka)/memory"] = per_round(confluent_live_steps, memory_steps)
    if "consumer_source" in runs and "tfio_source" in runs:
        out["confluent-kafka reader / tfio source"] = {
            str(n): per_round(rates("consumer_source", n), rates("tfio_source", n)) for n in counts}
    return out


def targets(ratios: dict[str, Any], contenders: dict[str, Any], precision: dict[str, Any], counts: list[int],
            reference: int) -> list[dict[str, Any]]:
    """The issue's targets, each as measured value against its requirement (op "report": no requirement).

    Rate ratios carry ``per_cpu_s``: the same ratio of images per CPU second, for the reader to
    tell a real gap from a neighbour's load (see ``round_ratios``).
    """
    rows: list[tuple[str, float, str, float, float | None]] = []
    for side in ("memory", "live"):
        key = f"pipeline_{side}/floor_{side}"
        for n in counts:
            rows.append((f"our pipeline / plain map floor, {'from memory' if side == 'memory' else 'live'}, "
                         f"{n} partition{'s' if n > 1 else ''}", ratios[key][str(n)]["median"], ">=", TARGET_RATIO,
                         ratios.get(f"{key} per CPU s", {}).get(str(n), {}).get("median")))
    first = min(counts)
    for side in ("live", "memory"):
        key = f"pipeline_{side} {first}p/{reference}p"
        if key in ratios:
            rows.append((f"our pipeline {side}: {first}-partition / {reference}-partition rate",
                         ratios[key]["median"], ">=", TARGET_RATIO, ratios.get(f"{key} per CPU s", {}).get("median")))
    rows.append(("training fed live / fed from memory (steps/s)", ratios["training live/memory"]["median"], ">=",
                 TARGET_RATIO, None))
    if "training live (confluent-kafka)/memory" in ratios:
        rows.append(("training fed live by the confluent-kafka reader / fed from memory (steps/s)",
                     ratios["training live (confluent-kafka)/memory"]["median"], ">=", TARGET_RATIO, None))
    for n, r in ratios.get("confluent-kafka reader / tfio source", {}).items():
        rows.append((f"confluent-kafka reader / tfio source (messages/s), {n} partition{'s' if n != '1' else ''}",
                     r["median"], "report", 0.0, None))
    rows.append(("freshness p99 (s) at 50% load, default config", contenders["freshness"]["p99_s"], "<", 2.0, None))
    speed, accuracy = precision.get("speed", {}), precision.get("accuracy", {})
    if "mixed_bfloat16" in speed and "float32" in speed:
        rows.append(("bf16 / fp32 training step rate", speed["mixed_bfloat16"]["vs_float32_median"], "report", 0.0,
                     None))
    for policy in ("float32", "mixed_bfloat16"):
        if policy in accuracy:
            rows.append((f"mean IoU after the same images, {policy}", accuracy[policy]["mean_iou_median"], "report",
                         0.0, None))
    out = []
    for name, value, op, required, per_cpu in rows:
        row = {"name": name, "measured": value, "op": op, "required": None if op == "report" else required,
               "met": None if op == "report" else (value >= required if op == ">=" else value < required)}
        if per_cpu is not None:
            row["per_cpu_s"] = per_cpu
        out.append(row)
    return out
