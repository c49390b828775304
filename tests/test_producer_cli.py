"""The ``pet-producer`` command as a process: shutdown on SIGTERM, and one-line errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "producer.cli", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP", "PET_PRODUCER_BOOTSTRAP"}}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _write_config(path: Path, data: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _count(cluster: Cluster, topic: str) -> int:
    marks = cluster.watermarks(topic, cluster.partitions(topic))
    return sum(w.high - w.low for w in marks.values())


def test_sigterm_flushes_in_flight_messages_and_reports_what_was_sent(
        kafka_config: KafkaConfig, cluster: Cluster, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:10]
    cfg = _write_config(tmp_path / "producer.yaml", {
        "kafka": {"bootstrap_servers": kafka_config.bootstrap_servers},
        "topics": {"train": f"cli-{tag}", "eval": f"cli-{tag}-eval", "dead_letter": f"cli-{tag}-dlq", "partitions": 2},
        "producer": {"source": {"count": 10, "min_size": 64, "max_size": 96, "eval_fraction": 0.0}},
    })
    proc = subprocess.Popen(_cli("--config", str(cfg), "--passes", "0", "--rate", "40", "--metrics-port", "0"),
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until it has really produced more than 10 messages (TensorFlow's import takes a few
        # seconds): what was delivered, not how long it ran, is what the report must account for.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _count(cluster, f"cli-{tag}") > 10:
                    break
            except Exception:
                pass
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    match = re.search(r"^summary sent=(\d+) failed=(\d+) skipped=(\d+)", out, re.MULTILINE)
    assert match, out
    sent, failed = int(match.group(1)), int(match.group(2))
    assert sent > 10 and failed == 0
    assert _count(cluster, f"cli-{tag}") == sent


def test_unreachable_broker_is_one_line_error_and_nonzero_exit(tmp_path: Path) -> None:
    port = free_port()
    cfg = _write_config(tmp_path / "producer.yaml", {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{port}", "connect_timeout_s": 2},
        "producer": {"metrics": {"port": 0}},
    })
    start = time.monotonic()
    proc = subprocess.run(_cli("--config", str(cfg)), cwd=ROOT, env=_env(), capture_output=True, text=True, check=False,
                          timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pet-producer: error: ") and f"127.0.0.1:{port}" in lines[0]
    assert elapsed < 20


def test_bootstrap_flag_beats_config_file(tmp_path: Path) -> None:
    port = free_port()
    cfg = _write_config(tmp_path / "producer.yaml", {"kafka": {"bootstrap_servers": "127.0.0.1:1",
                                                               "connect_timeout_s": 1}})
    proc = subprocess.run(_cli("--config", str(cfg), "--bootstrap", f"127.0.0.1:{port}", "--metrics-port", "0"),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr


def test_unknown_config_key_is_named_in_a_one_line_error(tmp_path: Path) -> None:
    cfg = _write_config(tmp_path / "producer.yaml", {"producer": {"source": {"kind": "synthetic", "cuont": 5}}})
    proc = subprocess.run(_cli("--config", str(cfg)), cwd=ROOT, env=_env(), capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pet-producer: error: ") and "producer.source.cuont" in lines[0]


def test_example_config_loads_and_only_configures_the_producer() -> None:
    from stream_trainer import config

    data = yaml.safe_load((ROOT / "configs" / "producer.yaml").read_text())
    assert set(data) == {"kafka", "topics", "producer"}
    settings = config.load(ROOT / "configs" / "producer.yaml")
    assert settings.producer.source.kind == "synthetic"


@pytest.mark.parametrize("present", [["images"], ["images", "annotations"]])
def test_dataset_folder_without_trimaps_is_a_one_line_error_naming_the_missing_folder(
        kafka_config: KafkaConfig, tmp_path: Path, present: list[str]) -> None:
    for folder in present:
        (tmp_path / folder).mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 40, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"Cat_{i}.jpg")
    missing = "annotations/" if present == ["images"] else "annotations/trimaps/"
    start = time.monotonic()
    # A real broker and one pass: without the check this run "succeeds", sending nothing.
    topic = f"cli-{uuid.uuid4().hex[:10]}"
    proc = subprocess.run(_cli("--source", "dir", "--path", str(tmp_path), "--passes", "1", "--metrics-port", "0",
                               "--bootstrap", kafka_config.bootstrap_servers, "--topic", topic),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"pet-producer: error: config key 'producer.source.path': {tmp_path} has images/ "
                               f"but no {missing} folder")
    assert proc.stdout == ""
    assert time.monotonic() - start < 30, "the folder should be refused before any broker work"
