"""Collectives between workers (learn/collectives.py, learn/agreement.py, learn/workers.py).

The pure parts run in-process; the rest runs two real MultiWorkerMirroredStrategy workers as
subprocesses on 127.0.0.1 (the strategy must exist before any other TensorFlow op, so never in
the pytest process), each printing what it saw as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from stream_trainer.config import Settings, build
from stream_trainer.errors import ConfigError
from stream_trainer.learn import agreement
from stream_trainer.learn.collectives import answers, describe, named_tasks, padded_length
from stream_trainer.workbench.broker import free_port

ROOT = Path(__file__).resolve().parents[1]

# Shaped like TensorFlow 2.16's text for a collective that lost a peer: the cause comes after the
# Python stack, so keeping the first line keeps nothing.
_TF_TEXT = """Graph execution error:

Detected at node CollectiveReduceV2 defined at (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main

  File "/x/stream_trainer/learn/collectives.py", line 60, in __call__

Task /job:worker/replica:0/task:2 heartbeat timeout. This indicates that the remote task has failed.
Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling ...
\t [[{{node CollectiveReduceV2}}]] [Op:__inference_all_sum_41]"""


def test_a_payload_length_is_padded_to_a_power_of_two() -> None:
    assert [padded_length(n) for n in (0, 1, 8, 9, 16, 17, 1000)] == [8, 8, 8, 16, 16, 32, 1024]
    assert len({padded_length(n) for n in range(1, 5000)}) == 11  # 8 ... 8192: 11 traces, not 4999


def test_a_collective_error_keeps_its_cause_without_the_python_stack() -> None:
    text = describe(tf.errors.UnavailableError(None, None, _TF_TEXT))
    assert text.startswith("Task /job:worker/replica:0/task:2 heartbeat timeout."), text
    assert "File " not in text and "Graph execution error" not in text and "\n" not in text
    assert "[Op:__inference_all_sum_41]" in text
    assert named_tasks(_TF_TEXT, exclude=0) == [2, 1]


def test_a_closed_port_does_not_answer() -> None:
    assert not answers(f"127.0.0.1:{free_port()}", timeout_s=1.0)


def test_settings_that_differ_between_workers_are_named() -> None:
    ours = agreement.fingerprints(Settings())
    theirs = agreement.fingerprints(build(Settings, {"trainer": {"replay": {"size_mib": 0},
                                                                    "loop": {"eval_every_steps": 7}}}))
    agreement.check(np.stack([ours, ours]), ["a:1", "b:2"])  # equal: nothing raised
    with pytest.raises(ConfigError) as err:
        agreement.check(np.stack([ours, theirs]), ["a:1", "b:2"])
    message = str(err.value)
    assert "trainer.replay.size_mib (worker 1 (b:2) differs" in message
    assert "trainer.loop.eval_every_steps" in message and "trainer.model" not in message


_WORKER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    from stream_trainer.config import ClusterConfig, Settings, build
    from stream_trainer.errors import StreamTrainerError
    from stream_trainer.learn.collectives import answers
    from stream_trainer.learn.workers import make_workers

    addresses, index, case = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    cfg = ClusterConfig(workers=addresses, index=index, peer_timeout_s=2.0, join_timeout_s=float(sys.argv[4]))
    out = {}
    try:
        w = make_workers(cfg)
        if case == "config":
            size = 4 if index == 0 else 0
            w.agree_config(build(Settings, {"trainer": {"cluster": {"workers": addresses, "index": index},
                                                           "replay": {"size_mib": size}}}))
        else:
            w.agree_config(build(Settings, {"trainer": {"cluster": {"workers": addresses, "index": index}}}))
            before = w.traces()
            for n in range(1, 51):  # 50 payload lengths, as the replay state grows checkpoint by checkpoint
                got = w.gather_json({"w": index, "pad": "x" * (n * 37 + index)})
                assert [g["w"] for g in got] == [0, 1]
            out["traces_for_50_lengths"] = w.traces() - before
            # TensorFlow's watchdog threads (one per collective, asleep for peer_timeout_s): counted
            # right, they are all the threads the burst added, and they end with the timeout.
            out["watchdogs"], out["threads"] = w.watchdogs(), len(os.listdir("/proc/self/task"))
            time.sleep(2.5)
            out["watchdogs_after"], out["threads_after"] = w.watchdogs(), len(os.listdir("/proc/self/task"))
            # The chief knows 2 partitions; worker 1 already found partition 3.
            own = {0: 5} if index == 0 else {1: 7, 3: 9}
            out["positions"] = w.gather_positions(own, 2)
            out["peer_answers"] = answers(addresses[1 - index])
            # The chief works alone for 3 peer timeouts: nobody is lost.
            t0 = time.monotonic()
            out["together"] = w.chief_only("evaluating", lambda: time.sleep(6.0))
            out["together_s"] = time.monotonic() - t0
            out["declined"] = w.chief_only("claiming", lambda: False)
            try:
                w.together("restoring", lambda: 1 / 0 if index == 1 else None)
            except ZeroDivisionError:
                out["failed"] = "ZeroDivisionError"
            except StreamTrainerError as exc:
                out["failed"] = str(exc)
            try:  # a worker that reached another collective of the same length
                w.sum_vector(np.zeros(5, np.int64), "vote" if index == 0 else "keep-alive")
            except StreamTrainerError as exc:
                out["mismatch"] = str(exc)
    except StreamTrainerError as exc:
        out["error"] = str(exc)
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)  # as the CLI does: a worker that never joined leaves TensorFlow's join blocked
""")


def _run_workers(case: str, count: int, join_timeout_s: float = 120.0) -> list[dict[str, Any]]:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(addresses), str(i), case,
                               str(join_timeout_s)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(count)]
    results = []
    try:
        for p in procs:
            output, _ = p.communicate(timeout=240)
            lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
            assert lines, output[-3000:]
            results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    return results


@pytest.mark.slow
def test_two_workers_gather_with_bounded_traces_keep_alive_and_keep_every_partition() -> None:
    results = _run_workers("gather", 2)
    for i, r in enumerate(results):
        assert "error" not in r, r
        # 50 lengths, sizes vector and payload per gather: the payloads span 64 to 4096 values.
        assert r["traces_for_50_lengths"] <= 8, r
        assert r["watchdogs"] >= 20 and r["watchdogs_after"] == 0, r
        assert abs(r["threads"] - r["watchdogs"] - r["threads_after"]) <= 3, r
        assert r["positions"] == {"0": 5, "1": 7, "3": 9}, r
        assert r["peer_answers"] is True
        assert r["together"] is True and r["together_s"] >= 5.5, r
        assert r["declined"] is False, r
        assert "the workers ran different collectives" in r.get("mismatch", ""), r
        if i == 1:
            assert r["failed"] == "ZeroDivisionError"
        else:
            assert r["failed"].startswith("worker 1 (127.0.0.1:") and "failed while restoring" in r["failed"], r


@pytest.mark.slow
def test_workers_with_different_collective_settings_both_stop_naming_the_key() -> None:
    for r in _run_workers("config", 2):
        assert "trainer.replay.size_mib (worker 1 (127.0.0.1:" in r.get("error", ""), r


def test_a_worker_started_alone_stops_naming_the_missing_one() -> None:
    [r] = _run_workers("config", 1, join_timeout_s=3.0)
    assert "worker 1 (127.0.0.1:" in r.get("error", "") and "did not join within" in r["error"], r
