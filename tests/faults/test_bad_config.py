"""Scenario 5: bad configuration ends in one line naming the cause and exit status 2, fast.

Never a hang (every run has a deadline), never a traceback, never a multi-line message: the
operator reads ``stream-trainer: error: ...`` and knows which key or resource to fix.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultlib import ROOT, child_env, free_port

PREFIX = "stream-trainer: error: "
# Config errors are found before TensorFlow loads; the Kafka and port checks come after it.
HANG_LIMIT_S = 90


def _run(config: Path, *args: str) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "run", "--config", str(config), *args],
                              cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=HANG_LIMIT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"stream-trainer hung for {HANG_LIMIT_S} s on a bad config; output:\n{exc.stderr}")
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def _assert_one_line_error(rc: int, output: str, *fragments: str) -> str:
    assert rc == 2, f"exit status {rc}, not 2:\n{output[-3000:]}"
    assert "Traceback" not in output, f"a traceback instead of one line:\n{output[-3000:]}"
    errors = [line for line in output.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1, f"expected exactly one '{PREFIX}' line:\n{output[-3000:]}"
    error = errors[0]
    # One line means nothing of the message spilled onto following lines.
    after = output.splitlines()[output.splitlines().index(error) + 1:]
    assert not [line for line in after if line.strip()], f"the error continues over several lines:\n{output}"
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"
    return error


def _write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


CONFIG_ONLY: list[tuple[str, dict[str, Any] | str, tuple[str, ...]]] = [
    ("unknown_key", {"trainer": {"loop": {"max_stepz": 5}}}, ("unknown config key 'trainer.loop.max_stepz'",)),
    ("unknown_section", {"trainr": {}}, ("unknown config key 'trainr'",)),
    ("wrong_type_int", {"trainer": {"pipeline": {"batch_size": "many"}}},
     ("'trainer.pipeline.batch_size'", "must be int", "'many'")),
    ("wrong_type_section", {"topics": ["pets", "pets-eval"]}, ("'topics'", "must be a mapping")),
    ("rule_violated", {"trainer": {"pipeline": {"image_size": 30}, "model": {"depth": 3}}},
     ("'trainer.pipeline.image_size'", "multiple of 2**trainer.model.depth")),
    ("invalid_yaml", "trainer:\n  loop: {max_steps: 5\n", ("is not valid YAML at line",)),
]


@pytest.mark.faults
@pytest.mark.parametrize(("case", "data", "fragments"), CONFIG_ONLY, ids=[c[0] for c in CONFIG_ONLY])
def test_invalid_config_is_one_line_naming_the_key_and_exit_2(
        tmp_path: Path, case: str, data: dict[str, Any] | str, fragments: tuple[str, ...]) -> None:
    rc, output, seconds = _run(_write(tmp_path, data))
    _assert_one_line_error(rc, output, *fragments)
    assert seconds < 30, f"{case}: a config error took {seconds:.0f} s to report"


@pytest.mark.faults
def test_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    rc, output, _ = _run(tmp_path / "nowhere.yaml")
    _assert_one_line_error(rc, output, "cannot read config file", "nowhere.yaml")


def _base(tmp_path: Path, bootstrap: str) -> dict[str, Any]:
    return {"kafka": {"bootstrap_servers": bootstrap, "connect_timeout_s": 3},
            "topics": {"train": f"missing-{uuid.uuid4().hex[:8]}"},
            "trainer": {"metrics": {"host": "127.0.0.1", "port": 0},
                        "checkpoint": {"dir": str(tmp_path / "ckpt"), "export_dir": str(tmp_path / "export")},
                        "loop": {"eval_wait_s": 0, "snapshot_dir": str(tmp_path / "snapshots"),
                                                   "tensorboard_dir": str(tmp_path / "tensorboard")}}}


@pytest.mark.faults
def test_missing_topic_is_one_line_naming_the_topic_and_exit_2(tmp_path: Path, kafka_bootstrap: str) -> None:
    data = _base(tmp_path, kafka_bootstrap)
    rc, output, _ = _run(_write(tmp_path, data))
    _assert_one_line_error(rc, output, f"topic '{data['topics']['train']}' does not exist")


@pytest.mark.faults
def test_unreachable_bootstrap_server_is_one_line_after_the_connect_timeout_and_exit_2(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    rc, output, seconds = _run(_write(tmp_path, _base(tmp_path, nobody)))
    _assert_one_line_error(rc, output, f"Kafka broker unreachable at {nobody}", "kafka.bootstrap_servers")
    assert seconds < 3 + 45, f"gave up after {seconds:.0f} s, the connect timeout is 3 s"


@pytest.mark.faults
def test_metrics_port_in_use_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, kafka_bootstrap: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = _base(tmp_path, kafka_bootstrap)
        data["trainer"]["metrics"]["port"] = port
        rc, output, _ = _run(_write(tmp_path, data))
    _assert_one_line_error(rc, output, "'trainer.metrics.port'", f"127.0.0.1:{port}", "Address already in use")


@pytest.mark.faults
def test_command_line_override_is_validated_like_the_file(tmp_path: Path) -> None:
    rc, output, _ = _run(_write(tmp_path, {}), "--bootstrap", "127.0.0.1:1", "--metrics-port", "70000")
    _assert_one_line_error(rc, output, "'trainer.metrics.port'", "TCP port")

