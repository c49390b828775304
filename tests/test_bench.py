"""``stream-trainer bench`` runs end to end against the session broker, and its report logic is right.

A benchmark is not a test: the end-to-end tests only prove that every scenario's ``--quick``
variant runs and writes complete outputs; the numbers live in docs/benchmarks.md, from full
runs. The report logic (windows, ratios, targets, metric parsing) is tested on fabricated data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import ConfigError
from stream_trainer.ingest.reader import tfio_config
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench import scenario_of
from stream_trainer.workbench.bench.arguments import workers_list
from stream_trainer.workbench.bench.learning import targets as learning_targets
from stream_trainer.workbench.bench.learning_parts import plateaued
from stream_trainer.workbench.bench.memory import (
    EVENTS,
    Sample,
    backlog_counts,
    per_partition_cost,
    phases,
    round_robin,
    trainer_config,
)
from stream_trainer.workbench.bench.scaleout import efficiency
from stream_trainer.workbench.bench.scrape import job_rates, parse_metrics
from stream_trainer.workbench.bench.sources import tfio_interleaved
from stream_trainer.workbench.bench.throughput import round_ratios
from stream_trainer.workbench.bench.throughput import targets as throughput_targets
from stream_trainer.workbench.bench.timing import BenchError, Timeline, round_order
from stream_trainer.workbench.bench.workload import stops_for

ROOT = Path(__file__).resolve().parents[1]
DECODERS = ["floor_memory", "pipeline_memory", "floor_live", "pipeline_live"]


class QuickRun:
    """One ``--quick`` bench in a child process (as users run it); its outputs once it has ended."""

    def __init__(self, bootstrap: str, out: Path, *args: str, tmpdir: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP", "STREAM_TRAINER_BOOTSTRAP"}}
        env["PYTHONPATH"] = str(ROOT)
        if tmpdir is not None:  # the run's scratch folders go there: its processes are told from other runs'
            env["TMPDIR"] = str(tmpdir)
        cmd = [sys.executable, "-m", "stream_trainer.cli", "bench", "--quick",
               "--bootstrap", bootstrap, "--out", str(out), *args]
        self.out = out
        self.log = out / "bench.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)

    def result(self, timeout_s: float = 190) -> dict[str, Any]:
        """Wait for the run; check it wrote complete outputs; return its JSON."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        output = self.log.read_text(errors="replace")
        assert code == 0, output[-3000:]
        (json_path,) = self.out.glob("*.json")  # one scenario per run
        results = json.loads(json_path.read_text())
        png = json_path.with_suffix(".png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        table = json_path.with_suffix(".md").read_text()
        assert table in output and "--quick" in results["command"]
        assert results["machine"]["device"] and len(results["load_average_after"]) == 3
        return results


# -- every scenario runs -------------------------------------------------------------------------
@pytest.mark.timeout(290)  # both readers' contenders and live training runs: ~30 s more than one reader's
def test_quick_throughput_bench_measures_every_contender_at_every_partition_count(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    results = QuickRun(kafka_bootstrap, tmp_path).result(timeout_s=280)
    c, counts = results["contenders"], ["1", "2"]
    for key in ["raw_consume", "tfio_source", "consumer_source", "pipeline_live_confluent", *DECODERS]:
        for n in counts:
            r = c[key]["by_partitions"][n]
            assert r["median"] > 0 and all(x > 0 for x in r["runs"]), (key, n)
            assert r["cpu_ms_per_item"]["median"] > 0, (key, n)
    for key in ("training_live", "training_live_confluent", "training_memory"):
        assert c[key]["median"] > 0 and c[key]["images_per_s"]["median"] > 0
    fresh = c["freshness"]
    assert 0 < fresh["p50_s"] <= fresh["p95_s"] <= fresh["p99_s"] <= fresh["max_s"]
    assert fresh["counted"] == len(fresh["latencies_s"]) > 0 and fresh["shuffle_buffer"] == 0
    assert fresh["replay"]["members_at_end"] > 0  # the default config replays
    assert set(results["precision"]["accuracy"]) >= {"float32", "mixed_bfloat16"}
    names = [t["name"] for t in results["targets"]]
    assert any("1-partition / 2-partition" in n for n in names) and any("bf16" in n for n in names)
    assert all(t["met"] is None if t["op"] == "report" else isinstance(t["met"], bool) for t in results["targets"])


@pytest.mark.timeout(200)
def test_quick_learning_bench_trains_the_same_images_with_and_without_replay(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    results = QuickRun(kafka_bootstrap, tmp_path, "--scenario", "learning").result()
    plain, replay = results["runs"]["without_replay"], results["runs"]["with_replay"]
    assert plain["a_images"] == replay["a_images"] > 0 and plain["b_images"] == replay["b_images"] > 0
    assert plain["replayed"] == 0 < replay["replayed"]
    for run in (plain, replay):
        assert run["evals"][0]["phase"] == "a" and run["evals"][-1]["phase"] == "b"
        assert all(0 <= e["a"] <= 1 and 0 <= e["b"] <= 1 for e in run["evals"])
    assert results["cost"]["ratio"]["median"] > 0 and results["cost"]["store_bytes"] > 0
    assert len(results["targets"]) == 6


@pytest.mark.faults
@pytest.mark.slow  # make test-faults: two worker processes (~30 s) outgrow make test's budget
@pytest.mark.timeout(200)
def test_quick_scaleout_bench_measures_both_jobs_and_leaves_no_worker_running(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    results = QuickRun(kafka_bootstrap, tmp_path, "--workers", "1,2").result()
    one, two = results["jobs"]["1"], results["jobs"]["2"]
    assert two["threads_per_worker"] == max(1, one["threads_per_worker"] // 2)  # each its share of the cores
    for job in (one, two):
        assert job["fresh_images_per_s"] > 0 and job["steps_per_s"] > 0 and all(m > 0 for m in job["peak_rss_mib"])
    assert one["collective_s_per_step"] == 0 < two["collective_s_per_step"]
    assert [w["worker"] for w in two["per_worker"]] == ["0", "1"]
    assert set(results["efficiency"]) == {"2"}
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_bench_worker(p)]
    assert not leftovers


def _is_bench_worker(proc: Path, marker: bytes = b"stream-trainer-bench-scaleout-") -> bool:
    try:
        return marker in (proc / "cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.faults
@pytest.mark.slow  # make test-faults: a whole trainer's run (~100 s) outgrows make test's budget
@pytest.mark.timeout(320)  # a whole trainer (import, traced step, export): ~100 s alone, ~190 s on busy cores
def test_quick_memory_bench_samples_a_real_trainer_through_every_phase_in_order(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    results = QuickRun(kafka_bootstrap, tmp_path, "--scenario", "memory", tmpdir=scratch).result(timeout_s=300)
    runs = results["runs"]["tensorflow-io"]
    assert set(runs) == {"2"}  # one trainer in --quick; the slope over partition counts is tested below
    for n, r in runs.items():
        # Every event the schedule promises was observed, in the order a run goes through them
        # (the quick backlog is smaller than the inbox: it never fills).
        seen = [e for e in EVENTS if e != "inbox_full"]
        assert all(e in r["events"] for e in seen), (n, r["events"])
        times = [r["events"][e] for e in seen]
        assert times == sorted(times), (n, r["events"])
        ph = r["phases"]
        assert all(p["rss_mib"] > 0 and p["threads"] > 0 for p in ph.values()), (n, ph)
        assert ph["tensorflow_imported"]["rss_mib"] < ph["training"]["rss_mib"] <= r["peak_rss_mib"]
        assert r["replay_bytes"] > 0 and r["stop_s"] < 60
    assert results["per_partition"]["tensorflow-io"] == {}  # one partition count: no slope
    assert results["workload"]["backlog_messages_per_partition"] > 0
    leftovers = [p for p in Path("/proc").iterdir()
                 if p.name.isdigit() and _is_bench_worker(p, f"{scratch}/stream-trainer-bench-memory-".encode())]
    assert not leftovers


# -- windows and rates ---------------------------------------------------------------------------
def test_round_robin_stops_split_the_first_messages_exactly() -> None:
    assert stops_for(10, 4) == {0: 3, 1: 3, 2: 2, 3: 2}
    assert sum(stops_for(3001, 4).values()) == 3001
    assert stops_for(2, 4) == {0: 1, 1: 1, 2: 0, 3: 0}


def _timeline(stamps: list[tuple[float, int]]) -> Timeline:
    tl = Timeline()
    for i, (t, items) in enumerate(stamps):
        tl.times.append(t)
        tl.cpu.append(2 * t)  # two cores busy
        tl.items.append(items)
        tl.nbytes.append(1000 * items)
        assert i == 0 or items >= tl.items[i - 1]
    return tl


@pytest.mark.parametrize(("partitions", "kib"), [(1, 32768), (4, 8192), (16, 4096)])
def test_the_live_floor_reads_each_partition_with_the_trainers_read_ahead_share(partitions: int, kib: int) -> None:
    """The floor's consumers get the properties our tensorflow-io readers get for as many
    partitions: given 32 MiB each, the floor outran our 8 MiB readers on read-ahead alone."""
    pytest.importorskip("tensorflow_io")
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:9")
    graph = tfio_interleaved(kafka, "t", dict.fromkeys(range(partitions), 10), "g", 1000)._as_serialized_graph().numpy()
    ours = tfio_config(kafka, partitions)
    assert f"queued.max.messages.kbytes={kib}" in ours
    missing = [p for p in ours if p.encode() not in graph]
    assert not missing, f"the floor's consumers lack {missing}"
    assert graph.count(b"queued.max.messages.kbytes=") == 1


def test_interleaved_contenders_run_in_reversed_order_every_other_round() -> None:
    orders = [round_order(("a", "b", "c"), r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"], ["c", "b", "a"]]


def test_rate_skips_the_head_and_tail_of_a_timeline_and_reports_cpu_per_item() -> None:
    tl = _timeline([(float(i), 10 * i) for i in range(11)])
    # head 20 -> starts at t=2; tail 30 -> ends at the last stamp <= 70 items, t=7.
    rate = tl.rate(head=20, tail=30)
    assert (rate.items, rate.seconds, rate.items_per_s, rate.bytes_per_s) == (50, 5.0, 10.0, 10000.0)
    assert rate.cpu_s_per_item == pytest.approx(0.2)
    with pytest.raises(BenchError, match=r"raise bench\.messages"):
        tl.rate(head=90, tail=30)


def test_window_edges_move_to_the_end_of_a_burst_so_a_burst_is_never_split() -> None:
    # Groups of 64 rows every second, handed over as 4 batches of 16 within 30 microseconds.
    stamps = [(g + b * 1e-5, 64 * g + 16 * (b + 1)) for g in range(10) for b in range(4)]
    tl = _timeline(stamps)
    rate = tl.rate(head=70, tail=40)  # both edges fall inside a burst: 80 rows and 592 rows
    # From the end of group 1 (128 rows) to the end of group 9 (640 rows): 8 groups in 8 seconds.
    assert rate.items == 512 and rate.items_per_s == pytest.approx(64.0, rel=1e-4)
    unaligned = (592 - 80) / 8.0  # what the edges inside the bursts would have said
    assert unaligned == 64.0 and tl.rate(head=128, tail=48).items == 512


def test_ratios_pair_the_runs_of_each_round() -> None:
    def rate(items_per_s: float, cpu_ms: float = 1.0) -> SimpleNamespace:
        return SimpleNamespace(items_per_s=items_per_s, cpu_s_per_item=cpu_ms / 1000)

    runs = {"floor_memory": {1: [rate(100.0), rate(50.0, 2.0)], 4: [rate(100.0), rate(100.0)]},
            "pipeline_memory": {1: [rate(90.0, 1.25), rate(50.0, 2.0)], 4: [rate(100.0), rate(80.0)]},
            "floor_live": {1: [rate(10.0)] * 2, 4: [rate(10.0)] * 2},
            "pipeline_live": {1: [rate(10.0)] * 2, 4: [rate(20.0)] * 2}}
    ratios = round_ratios(runs, [1, 4], 4, [1.0, 2.0], [2.0, 2.0])
    assert ratios["pipeline_memory/floor_memory"]["1"] == {"median": 0.95, "rounds": [0.9, 1.0]}
    # Round 1: the pipeline needed 1.25 CPU ms per image against the floor's 1.0: 0.8 per CPU second.
    assert ratios["pipeline_memory/floor_memory per CPU s"]["1"] == {"median": 0.9, "rounds": [0.8, 1.0]}
    assert ratios["pipeline_memory 1p/4p"]["rounds"] == [0.9, 0.625]
    assert ratios["pipeline_live 1p/4p"]["median"] == 0.5
    assert ratios["training live/memory"]["median"] == 0.75


def test_throughput_targets_judge_each_floor_ratio_and_only_report_precision() -> None:
    ratios = {"pipeline_memory/floor_memory": {"1": {"median": 0.95}, "4": {"median": 0.9}},
              "pipeline_memory/floor_memory per CPU s": {"1": {"median": 0.97}, "4": {"median": 0.93}},
              "pipeline_live/floor_live": {"1": {"median": 1.2}, "4": {"median": 0.96}},
              "pipeline_live 1p/4p": {"median": 0.97}, "pipeline_memory 1p/4p": {"median": 0.5},
              "training live/memory": {"median": 0.99}}
    contenders = {"freshness": {"p99_s": 2.0}}
    precision = {"speed": {"float32": {"vs_float32_median": 1.0}, "mixed_bfloat16": {"vs_float32_median": 1.8}},
                 "accuracy": {"float32": {"mean_iou_median": 0.7}, "mixed_bfloat16": {"mean_iou_median": 0.69}}}
    rows = {t["name"]: t for t in throughput_targets(ratios, contenders, precision, [1, 4], 4)}
    assert rows["our pipeline / plain map floor, from memory, 1 partition"]["met"] is True  # >= is inclusive
    assert rows["our pipeline / plain map floor, from memory, 4 partitions"]["met"] is False
    assert rows["our pipeline / plain map floor, from memory, 4 partitions"]["per_cpu_s"] == 0.93
    assert "per_cpu_s" not in rows["our pipeline / plain map floor, live, 1 partition"]
    assert rows["our pipeline live: 1-partition / 4-partition rate"]["met"] is True
    assert rows["our pipeline memory: 1-partition / 4-partition rate"]["met"] is False
    assert rows["freshness p99 (s) at 50% load, default config"]["met"] is False  # < 2 s is strict
    assert rows["bf16 / fp32 training step rate"] == {
        "name": "bf16 / fp32 training step rate", "measured": 1.8, "op": "report", "required": None, "met": None}
    assert rows["mean IoU after the same images, mixed_bfloat16"]["measured"] == 0.69


# -- learning ------------------------------------------------------------------------------------
def test_a_phase_has_plateaued_when_patience_evaluations_gain_less_than_min_delta() -> None:
    assert not plateaued([0.1, 0.3, 0.5], patience=2, min_delta=0.01)
    assert not plateaued([0.1, 0.5, 0.505, 0.52], patience=2, min_delta=0.01)  # 0.52 beats 0.5 by 0.02
    assert plateaued([0.1, 0.5, 0.505, 0.49], patience=2, min_delta=0.01)
    assert not plateaued([0.5, 0.4], patience=2, min_delta=0.01)  # too few evaluations to tell


def test_learning_targets_compare_forgetting_with_the_peak_and_b_with_the_plain_run() -> None:
    runs = {"with_replay": {"a_peak": 0.80, "a_after_b": 0.76, "b_after_b": 0.57, "rss_growth_mib": 1.5},
            "without_replay": {"a_peak": 0.80, "a_after_b": 0.40, "b_after_b": 0.60}}
    cost = {"ratio": {"median": 0.94}, "store_bytes": 64 * 2**20}
    rows = {t["name"]: t for t in learning_targets(runs, cost)}
    forgetting = rows["with replay: IoU on A after B - peak IoU on A"]
    assert forgetting["measured"] == pytest.approx(-0.04) and forgetting["met"] is True
    assert rows["IoU on B after B: with replay / without"]["measured"] == pytest.approx(0.95)
    assert rows["IoU on B after B: with replay / without"]["met"] is True
    assert rows["step rate with replay / without, same batch size"]["met"] is False
    assert rows["without replay: IoU on A after B - peak IoU on A"]["met"] is None
    assert rows["replay store bytes allocated (MiB)"]["measured"] == 64


# -- scale-out -----------------------------------------------------------------------------------
_METRICS = """# TYPE stream_trainer_images_trained_total counter
stream_trainer_images_trained_total{{worker="{w}"}} {images}
# TYPE stream_trainer_images_replayed_total counter
stream_trainer_images_replayed_total{{worker="{w}"}} {replayed}
# TYPE stream_trainer_steps_total counter
stream_trainer_steps_total{{worker="{w}"}} {steps}
# TYPE stream_trainer_collective_seconds histogram
stream_trainer_collective_seconds_bucket{{le="0.01",worker="{w}"}} {votes}
stream_trainer_collective_seconds_bucket{{le="+Inf",worker="{w}"}} {votes}
stream_trainer_collective_seconds_sum{{worker="{w}"}} {vote_s}
stream_trainer_collective_seconds_count{{worker="{w}"}} {votes}
# TYPE stream_trainer_step_duration_seconds histogram
stream_trainer_step_duration_seconds_bucket{{le="+Inf",worker="{w}"}} {steps}
stream_trainer_step_duration_seconds_sum{{worker="{w}"}} {step_s}
stream_trainer_step_duration_seconds_count{{worker="{w}"}} {steps}
"""


def _sample(w: str, images: int, replayed: int, steps: int, votes: int, vote_s: float, step_s: float) -> Any:
    return parse_metrics(_METRICS.format(w=w, images=images, replayed=replayed, steps=steps, votes=votes,
                                         vote_s=vote_s, step_s=step_s))


def test_job_rates_add_workers_images_and_average_their_vote_time() -> None:
    before = [_sample("0", 100, 30, 10, 12, 0.1, 5.0), _sample("1", 90, 30, 10, 12, 0.3, 5.0)]
    after = [_sample("0", 220, 70, 20, 22, 0.2, 10.0), _sample("1", 210, 70, 20, 22, 0.5, 11.0)]
    assert after[1].worker == "1" and after[1].collective_count == 22
    r = job_rates(before, after, 10.0)
    assert r["fresh_images_per_s"] == pytest.approx(24.0) and r["replayed_rows_per_s"] == pytest.approx(8.0)
    assert r["rows_per_s"] == pytest.approx(32.0) and r["steps_per_s"] == pytest.approx(1.0)
    # Worker 0 voted 0.1 s, worker 1 0.2 s over 10 steps: 15 ms per step on average; 10 votes each.
    assert r["collective_s_per_step"] == pytest.approx(0.015) and r["collective_s_per_vote"] == pytest.approx(0.015)
    assert r["step_s_mean"] == pytest.approx(0.55)


def test_a_worker_alone_never_votes_and_efficiency_compares_with_n_times_one_worker() -> None:
    r = job_rates([_sample("0", 0, 0, 0, 0, 0.0, 0.0)], [_sample("0", 50, 10, 5, 0, 0.0, 1.0)], 5.0)
    assert r["collective_s_per_step"] == 0.0 and r["fresh_images_per_s"] == 10.0
    assert efficiency({"1": {"fresh_images_per_s": 10.0}, "2": {"fresh_images_per_s": 15.0},
                       "4": {"fresh_images_per_s": 20.0}}) == {"2": 0.75, "4": 0.5}
    assert efficiency({"2": {"fresh_images_per_s": 15.0}}) == {}


# -- memory --------------------------------------------------------------------------------------
def _samples(rss: list[float]) -> list[Sample]:
    return [Sample(t_s=float(i), rss_mib=r, anon_mib=r - 100, file_mib=100, hwm_mib=max(rss[:i + 1]),
                   threads=10 + i, steps=0, consumers=0, inbox=0, checkpoints=0, exports=0, replay_bytes=0,
                   step_s=0)
            for i, r in enumerate(rss)]


def test_memory_phases_lie_between_their_events_and_training_is_the_later_half_median() -> None:
    #        t: 0    1    2    3    4    5    6    7    8    9    10   11   12   13
    rss = [0.0, 300, 320, 500, 700, 650, 660, 680, 670, 690, 900, 800, 850, 820]
    events = {"tensorflow": 1, "readers": 3, "baseline_eval": 4, "first_step": 5, "step_n": 10, "eval_n": 11,
              "checkpoint": 12, "export": 13}
    ph = phases(_samples(rss), {k: float(v) for k, v in events.items()})
    assert ph["tensorflow_imported"] == {"rss_mib": 300, "anon_mib": 200, "file_mib": 100, "threads": 11}
    assert ph["model_optimizer_replay"]["rss_mib"] == 320  # before the readers, not at them
    assert ph["readers_and_baseline_eval"]["rss_mib"] == 700
    assert ph["first_step"]["rss_mib"] == 650
    assert ph["training"]["rss_mib"] == 690  # t 8..10 of 5..10: 670, 690, 900 -> median 690
    assert ph["evaluation"]["rss_mib"] == 900 and ph["checkpoint"]["rss_mib"] == 850
    assert ph["export"] == {"rss_mib": 850, "anon_mib": 750, "file_mib": 100, "threads": 23}


def test_memory_cost_per_partition_is_the_slope_over_partition_counts() -> None:
    def run(training: float, peak: float, threads: int) -> dict[str, Any]:
        return {"phases": {"training": {"rss_mib": training, "threads": threads}}, "peak_rss_mib": peak}

    cost = per_partition_cost({"1": run(1000, 1100, 30), "4": run(1180, 1280, 60), "16": run(1900, 2000, 180)})
    assert cost == {"training_rss_mib": 60.0, "peak_rss_mib": 60.0, "threads": 10.0}
    assert per_partition_cost({"4": run(1, 1, 1)}) == {}


def test_memory_backlog_is_full_in_the_first_partitions_and_smaller_beyond_spread_in_turn() -> None:
    mc = bench_config.MemoryConfig(backlog_mib_per_partition=1.0, backlog_full_partitions=2, backlog_mib_beyond=0.25)
    # 1 MiB of 1 KiB messages in partitions 0 and 1, a quarter of that in partitions 2 and 3.
    assert backlog_counts(mc, 1024, 4) == [1024, 1024, 256, 256]
    assert backlog_counts(mc, 1024, 2) == [1024, 1024]  # fewer partitions than the full ones: all full
    spread = round_robin([3, 3, 1, 1])
    assert spread == [0, 1, 2, 3, 0, 1, 0, 1]
    assert [spread.count(p) for p in range(4)] == [3, 3, 1, 1]


def test_memory_runs_name_their_reader_even_the_first(tmp_path: Path) -> None:
    settings, bench = bench_config.load(None, overrides={"bench.memory.readers": ["confluent-kafka"]})
    assert bench.memory.readers == ["confluent-kafka"]
    conf = trainer_config(settings, bench.memory, "t", "e", "confluent-kafka", 3, 9999, tmp_path)
    # Left empty, the stack's default (tensorflow-io where installed) would be measured instead.
    assert conf["trainer"]["source"]["reader"] == "confluent-kafka"
    assert conf["trainer"]["source"]["partitions"] == [0, 1, 2]


# -- flags and config ----------------------------------------------------------------------------
def test_workers_flag_selects_scale_out_and_takes_distinct_counts() -> None:
    assert workers_list("1,2") == [1, 2]
    for bad in ("0,1", "1,1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            workers_list(bad)
    assert scenario_of(argparse.Namespace(workers=[1, 2], scenario="learning")) == "scaleout"
    assert scenario_of(argparse.Namespace(workers=None, scenario="learning")) == "learning"
    assert scenario_of(argparse.Namespace(workers=None, scenario=None)) == "throughput"


def test_bench_config_rejects_messages_too_few_for_the_timed_window(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    for text, error in (
            ("bench:\n  messages: 100\n  warmup_messages: 90\n", r"bench\.messages"),
            ("bench:\n  partitions: 3\n", r"bench\.partitions' must be one of bench\.partition_counts"),
            ("bench:\n  memory:\n    readers: []\n", r"bench\.memory\.readers"),
            ("bench:\n  memory:\n    backlog_mib_beyond: 0\n", r"bench\.memory\.backlog_mib_beyond"),
            ("bench:\n  mesages: 100\n", r"unknown config key 'bench\.mesages'")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=error):
            bench_config.load(path)


@pytest.mark.parametrize("name", ["bench.yaml", "bench-gpu.yaml"])
def test_shipped_bench_configs_load_and_quick_shrinks_them(name: str) -> None:
    settings, bench = bench_config.load(ROOT / "configs" / name)
    assert bench.partition_counts == [1, 4, 16] and settings.trainer.pipeline.shuffle_buffer == 0
    assert [p.name for p in bench.learning.phases] == ["a", "b"]
    settings, bench = bench_config.load(ROOT / "configs" / name, quick=True,
                                        overrides={"bench.repeats": 2, "kafka.bootstrap_servers": "h:1"})
    assert bench.messages == 64 and bench.repeats == 2 and settings.kafka.bootstrap_servers == "h:1"
    assert settings.trainer.pipeline.image_size == 32
