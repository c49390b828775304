"""``stream-trainer bench --quick`` runs end to end against the session broker.

A benchmark is not a test: this only proves the command works and writes complete outputs.
The numbers themselves live in docs/benchmarks.md, from a full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench.timing import BenchError, Timeline
from stream_trainer.workbench.bench.workload import stops_for
from stream_trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ["raw_consume", "tfio_source", "pipeline", "in_memory", "naive", "tfio_tutorial",
              "training_live", "training_memory", "freshness"]


@pytest.mark.timeout(120)
def test_quick_bench_writes_json_png_and_markdown_with_every_contender(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP", "STREAM_TRAINER_BOOTSTRAP"}}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "stream_trainer.cli", "bench", "--quick", "--bootstrap", kafka_bootstrap,
         "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    c = results["contenders"]
    assert sorted(c) == sorted(CONTENDERS)
    for key in CONTENDERS[:6]:
        assert c[key]["median"] > 0 and all(r > 0 for r in c[key]["runs"]), key
    for key in ("raw_consume", "tfio_source"):
        assert c[key]["mb_per_s"]["median"] > 0
    for key in ("training_live", "training_memory"):
        assert c[key]["median"] > 0 and c[key]["images_per_s"]["median"] > 0
        assert c[key]["mean_input_wait_ms"]["median"] >= 0
    fresh = c["freshness"]
    assert 0 < fresh["p50_s"] <= fresh["p95_s"] <= fresh["p99_s"] <= fresh["max_s"]
    assert fresh["counted"] == len(fresh["latencies_s"]) > 0
    assert [t["name"] for t in results["targets"]] and all(isinstance(t["met"], bool) for t in results["targets"])
    assert results["machine"]["nproc"] >= 1 and len(results["load_average_after"]) == 3
    assert results["memory"]["trainer_peak_rss_mib"] > 0 and results["memory"]["daemon"]["peak_rss_mib"] > 0
    assert "--quick" in results["command"]

    png = (tmp_path / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    table = (tmp_path / "results.md").read_text()
    assert table in proc.stdout
    for title in (c[k]["title"] for k in CONTENDERS):
        assert title in table
    assert "| target | measured | required | met |" in table


def test_round_robin_stops_split_the_first_messages_exactly() -> None:
    assert stops_for(10, 4) == {0: 3, 1: 3, 2: 2, 3: 2}
    assert sum(stops_for(3001, 4).values()) == 3001
    assert stops_for(2, 4) == {0: 1, 1: 1, 2: 0, 3: 0}


def test_rate_skips_the_head_and_tail_of_a_timeline() -> None:
    tl = Timeline()
    for i in range(11):
        tl.times.append(float(i))
        tl.items.append(10 * i)
        tl.nbytes.append(1000 * i)
    # head 20 -> starts at t=2; tail 30 -> ends at the last stamp <= 70 items, t=7.
    rate = tl.rate(head=20, tail=30)
    assert (rate.items, rate.seconds, rate.items_per_s, rate.bytes_per_s) == (50, 5.0, 10.0, 1000.0)
    with pytest.raises(BenchError, match="raise bench.messages"):
        tl.rate(head=90, tail=30)


def test_bench_config_rejects_messages_too_few_for_the_timed_window(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text("bench:\n  messages: 100\ntrainer:\n  pipeline:\n    shuffle_buffer: 256\n")
    with pytest.raises(ConfigError, match="bench.messages"):
        bench_config.load(path)
    path.write_text("bench:\n  mesages: 100\n")
    with pytest.raises(ConfigError, match="unknown config key 'bench.mesages'"):
        bench_config.load(path)


def test_shipped_bench_config_loads_and_quick_shrinks_it() -> None:
    settings, bench = bench_config.load(ROOT / "configs" / "bench.yaml")
    assert bench.messages == 3000 and settings.trainer.pipeline.image_size == 128
    settings, bench = bench_config.load(ROOT / "configs" / "bench.yaml", quick=True,
                                        overrides={"bench.repeats": 2, "kafka.bootstrap_servers": "h:1"})
    assert bench.messages == 60 and bench.repeats == 2 and settings.kafka.bootstrap_servers == "h:1"
    assert settings.trainer.pipeline.image_size == 64
