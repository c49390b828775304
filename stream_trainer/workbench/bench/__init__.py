"""``stream-trainer bench``: the input pipeline against its limits, on a real broker.

The story of one run: produce the same synthetic messages once; run every throughput contender
once as a warm-up, then ``repeats`` interleaved rounds (so background load hits them alike);
train the same model fed live and from memory; measure freshness at a fixed producer rate; run
``stream-trainer run`` briefly for its peak RSS; write ``results.json``, ``results.png`` and
``results.md`` and print the table.

Modules: ``config`` (the ``bench:`` section), ``workload`` (messages and topics), ``timing``
(steady-state rates), ``contenders`` (1-6), ``training`` (7), ``freshness`` (8), ``rss`` (the
real daemon's peak memory), ``machine`` (cores, versions, this process's RSS), ``report``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from stream_trainer import config as settings_config
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench import machine, report
from stream_trainer.workbench.bench.config import BenchConfig
from stream_trainer.workbench.broker import KAFKA_VERSION, LocalBroker
from stream_trainer.config import Settings

log = logging.getLogger(__name__)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark as the CLI's ``bench`` sub-command asks; write the outputs; return 0."""
    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP")
    settings, bench = bench_config.load(args.config, quick=args.quick, overrides={
        "bench.messages": args.messages, "bench.repeats": args.repeats, "kafka.bootstrap_servers": bootstrap})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    broker, workdir = None, None
    if not bootstrap:
        workdir = Path(tempfile.mkdtemp(prefix="stream-trainer-bench-kafka-"))
        broker = LocalBroker(workdir)
        settings = settings_config.replace(settings, "kafka.bootstrap_servers", broker.start())
    try:
        results = run(settings, bench, command=_command(args))
        results["broker"] = {"bootstrap": settings.kafka.bootstrap_servers, "local": broker is not None,
                             "kafka_version": KAFKA_VERSION if broker is not None else "external"}
        write_outputs(results, out)
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(workdir, ignore_errors=True)  # type: ignore[arg-type]
    return 0


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json, results.png and results.md under ``out``; the table is printed too."""
    report.write_json(results, out / "results.json")
    report.chart(results, out / "results.png")
    table = report.markdown(results)
    (out / "results.md").write_text(table)
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.png'}, {out / 'results.md'}", flush=True)


def _command(args: argparse.Namespace) -> str:
    parts = ["stream-trainer bench"]
    for flag, value in (("--config", args.config), ("--messages", args.messages), ("--repeats", args.repeats)):
        if value is not None:
            parts.append(f"{flag} {value}")
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def run(settings: Settings, bench: BenchConfig, command: str = "stream-trainer bench") -> dict[str, Any]:
    """Every contender against the broker in ``settings``; the results as plain data."""
    # Imported here: TensorFlow takes seconds to load, and config errors should not wait for it.
    from stream_trainer.workbench.bench import freshness, rss, training
    from stream_trainer.workbench.bench.contenders import CONTENDERS, Context
    from stream_trainer.workbench.bench.timing import summary
    from stream_trainer.workbench.bench.workload import make_records, produce_all
    from stream_trainer.kafka import Cluster

    began, load_before = time.monotonic(), machine.load_average()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    p = settings.trainer.pipeline
    cluster = Cluster(settings.kafka, group_id="stream-trainer-bench")
    try:
        cluster.wait_until_reachable()
        log.info("generating %d synthetic %d px pets", bench.messages, bench.message_image_px)
        records = make_records(bench.messages, bench.message_image_px, bench.seed)
        workload = produce_all(cluster, records, bench.partitions)
        log.info("produced %d messages (mean %.1f KB) to %s", bench.messages, workload.mean_bytes / 1000,
                 workload.topic)
        ctx = Context(settings, bench, workload)

        for c in CONTENDERS:  # warm-up round: connections, tf.function tracing, the broker's page cache
            t0 = time.monotonic()
            c.run(ctx, min(bench.warmup_round_messages, bench.messages))
            log.info("warm-up %-14s %.1f s", c.key, time.monotonic() - t0)
        rates: dict[str, list[Any]] = {c.key: [] for c in CONTENDERS}
        for round_ in range(bench.repeats):
            for c in CONTENDERS:
                head = bench.warmup_messages + (p.shuffle_buffer + p.batch_size if c.shuffled else 0)
                rate = c.run(ctx, bench.messages).rate(head, p.shuffle_buffer if c.shuffled else 0)
                rates[c.key].append(rate)
                log.info("round %d/%d %-14s %9.1f %s (%d items in %.2f s)", round_ + 1, bench.repeats, c.key,
                         rate.items_per_s, c.unit, rate.items, rate.seconds)

        rss_before = machine.rss_mib()
        machine.reset_peak_rss()
        trainer = training.Trainer(ctx)
        memory_batches = training.cached_memory_batches(ctx)
        trainer.run(lambda: memory_batches, 1, 1)  # traces the step outside every timed window
        live_runs, memory_runs = [], []
        for round_ in range(bench.repeats):
            live, mem = training.live_and_memory(ctx, trainer, memory_batches, memory_first=round_ % 2 == 1)
            live_runs.append(live)
            memory_runs.append(mem)
            log.info("round %d/%d training: live %.3f steps/s (wait %.1f ms), memory %.3f steps/s", round_ + 1,
                     bench.repeats, live.steps_per_s, 1000 * live.mean_input_wait_s, mem.steps_per_s)
        capacity = statistics.median(r.images_per_s for r in memory_runs)
        fresh = freshness.measure(ctx, trainer, cluster, records, capacity)
        log.info("freshness at %.1f msg/s: p50 %.3f s, p95 %.3f s, p99 %.3f s", fresh["rate_messages_per_s"],
                 fresh["p50_s"], fresh["p95_s"], fresh["p99_s"])
        trainer_peak = machine.peak_rss_mib()
        daemon = rss.trainer_peak_rss(settings, workload.topic, bench.train_warmup_steps + bench.train_steps)
        log.info("stream-trainer run: peak RSS %.1f MiB over %d steps", daemon["peak_rss_mib"], daemon["steps"])
        cluster.admin.delete_topics([workload.topic, f"{workload.topic}-dlq"])
    finally:
        cluster.close()

    contenders: dict[str, Any] = {}
    for c in CONTENDERS:
        contenders[c.key] = {"title": c.title, "unit": c.unit, **summary([r.items_per_s for r in rates[c.key]])}
        if c.unit == "messages/s":
            contenders[c.key]["mb_per_s"] = summary([r.bytes_per_s / 1e6 for r in rates[c.key]])
    for key, title, runs in (("training_live", "training fed live (Kafka -> our pipeline)", live_runs),
                             ("training_memory", "training fed from memory (cached batches)", memory_runs)):
        contenders[key] = {
            "title": title, "unit": "steps/s", **summary([r.steps_per_s for r in runs]),
            "images_per_s": summary([r.images_per_s for r in runs]),
            "mean_input_wait_ms": summary([1000 * r.mean_input_wait_s for r in runs]),
            "max_input_wait_ms": summary([1000 * r.max_input_wait_s for r in runs]),
        }
    contenders["freshness"] = {"title": "freshness (produce -> trained latency)", "unit": "s", **fresh}

    return {
        "command": command,
        "started_at": started_at,
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine.describe(),
        "load_average_before": load_before,
        "load_average_after": machine.load_average(),
        "repeats": bench.repeats,
        "workload": {
            "messages": bench.messages, "partitions": bench.partitions, "message_image_px": bench.message_image_px,
            "mean_message_bytes": workload.mean_bytes, "image_size": p.image_size, "batch_size": p.batch_size,
            "shuffle_buffer": p.shuffle_buffer, "warmup_messages": bench.warmup_messages,
        },
        "config": {"bench": bench_config.as_dict(bench), "pipeline": bench_config.as_dict(p),
                   "model": bench_config.as_dict(settings.trainer.model),
                   "poll_timeout_ms": settings.trainer.source.poll_timeout_ms},
        "contenders": contenders,
        "targets": targets(contenders),
        "memory": {"daemon": daemon, "trainer_peak_rss_mib": trainer_peak, "rss_before_training_mib": rss_before,
                   "process_peak_rss_mib": machine.process_peak_rss_mib()},
    }


def targets(c: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's four targets, each as measured ratio (or seconds) against its requirement."""
    limit = min(c["raw_consume"]["median"], c["in_memory"]["median"])
    rows = [
        ("our pipeline / min(raw consume, in-memory decode)", c["pipeline"]["median"] / limit, ">=", 0.9),
        ("our pipeline / naive loop", c["pipeline"]["median"] / c["naive"]["median"], ">=", 3.0),
        ("training fed live / fed from memory (steps/s)",
         c["training_live"]["median"] / c["training_memory"]["median"], ">=", 0.95),
        ("freshness p99 (s) at the configured load", c["freshness"]["p99_s"], "<", 2.0),
    ]
    return [{"name": name, "measured": value, "op": op, "required": required,
             "met": value >= required if op == ">=" else value < required} for name, value, op, required in rows]
