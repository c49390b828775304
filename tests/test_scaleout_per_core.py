"""``bench --workers N,M --cores-per-worker K``: each worker on its own K cores, reported per core (issue 23).

The flag and its refusal, the affinity the kernel reports for a pinned child's every thread
(TensorFlow's pools included), the report's arithmetic on fabricated jobs, and (slow) one
``--quick`` run end to end, whose workers' affinity the bench itself read back from /proc.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from stream_trainer.errors import ConfigError
from stream_trainer.workbench.bench.arguments import cores_count
from stream_trainer.workbench.bench.scaleout import efficiency
from stream_trainer.workbench.bench.scaleout_allreduce import summarise
from stream_trainer.workbench.bench.scaleout_cores import (
    affinity_of,
    cpu_list,
    launch,
    parse_cpu_list,
    pin,
    plan,
    stop_all,
)
from stream_trainer.workbench.bench.scaleout_report import per_core_markdown, per_core_rows

ROOT = Path(__file__).resolve().parents[1]
USABLE = sorted(os.sched_getaffinity(0))


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stream_trainer.cli", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# -- the flag --------------------------------------------------------------------------------------
def test_cores_per_worker_takes_a_positive_count() -> None:
    assert cores_count("2") == 2
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="--cores-per-worker"):
            cores_count(bad)


def test_each_worker_of_the_largest_job_gets_its_own_cores_and_the_rest_go_to_broker_and_bench() -> None:
    p = plan([1, 2], 2, usable=[0, 1, 2, 3, 4, 5])
    assert p.workers == [[0, 1], [2, 3]] and p.others == [4, 5]
    assert p.describe("local")["shared"].startswith("the broker (started by the bench) and the bench process on "
                                                    "cores 4-5")
    tight = plan([1, 2], 1, usable=[0, 1])  # this VM: nothing left over, which the report must say
    assert tight.workers == [[0], [1]] and tight.others == []
    assert tight.describe("local")["shared"] == (
        "the broker (started by the bench) and the bench process unpinned: no core is left over (2 usable, 2 x 1 "
        "for the workers), so they share cores 0-1 with the workers")
    assert tight.describe("external")["shared"].endswith("; the broker is external (not placed by the bench)")


def test_a_core_count_that_does_not_fit_the_host_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--cores-per-worker 2 does not fit this host: 2 workers x 2 cores "
                                          r"needs 4, and 3 are usable \(0-2\); lower it to at most 1"):
        plan([1, 2], 2, usable=[0, 1, 2])
    plan([1, 2], 1, usable=[0, 1])  # exactly full fits


def test_the_command_refuses_an_oversized_k_in_one_line_before_starting_anything() -> None:
    k = len(USABLE)  # 2 workers x all the cores: never fits
    t0 = time.monotonic()
    # An unreachable broker: a refusal that started anything would fail differently, and later.
    done = _bench("--workers", "1,2", "--cores-per-worker", str(k), "--bootstrap", "127.0.0.1:1", "--quick")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"stream-trainer: error: --cores-per-worker {k} does not fit this host: 2 workers x {k} cores "
                     f"needs {2 * k}, and {k} are usable ({cpu_list(USABLE)}); lower it to at most {k // 2}"]
    assert time.monotonic() - t0 < 60
    alone = _bench("--cores-per-worker", "1", "--bootstrap", "127.0.0.1:1", "--quick")
    assert alone.returncode == 2 and alone.stderr.strip() == (
        "stream-trainer: error: --cores-per-worker applies to the scale-out scenario only: add --workers, "
        "e.g. --workers 1,2")


# -- the affinity, as the kernel reports it ---------------------------------------------------------
_TF_CHILD = """
import os, sys, time
import tensorflow as tf
x = tf.random.uniform([256, 256])
for _ in range(20):
    x = tf.linalg.matmul(x, x) / 256.0  # TensorFlow's intra-op pool has started its threads
data = tf.data.Dataset.range(64).map(lambda v: v * 2, num_parallel_calls=4)
data.reduce(tf.constant(0, tf.int64), lambda a, b: a + b)  # and tf.data its own
open(sys.argv[1], "w").write("ready")
time.sleep(120)
"""


@pytest.mark.timeout(180)
def test_a_pinned_child_and_every_thread_it_starts_run_only_on_its_cores(tmp_path: Path) -> None:
    cores = USABLE[-1:]  # one core: a mask the bench itself (all cores) does not have
    ready = tmp_path / "ready"
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = launch([sys.executable, "-c", _TF_CHILD, str(ready)], env, tmp_path / "child.log", cores)
    try:
        deadline = time.monotonic() + 150
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "child.log").read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        (line,) = [x for x in status.splitlines() if x.startswith("Cpus_allowed_list:")]
        assert parse_cpu_list(line.split(":")[1]) == cores
        seen = affinity_of(proc.pid)
        assert seen["cpus_allowed_list"] == cpu_list(cores)
        assert seen["threads"] > 3 and seen["threads_elsewhere"] == 0, seen  # TensorFlow's threads too
    finally:
        stop_all([proc])
    assert proc.poll() is not None


_THREADED_CHILD = """
import sys, threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
open(sys.argv[1], "w").write("ready")
time.sleep(120)
"""


def test_pinning_a_running_process_moves_every_thread_it_already_has(tmp_path: Path) -> None:
    # How the bench moves the local broker's JVM (already running, many threads) off the workers' cores.
    ready = tmp_path / "ready"
    proc = launch([sys.executable, "-c", _THREADED_CHILD, str(ready)], dict(os.environ), tmp_path / "c.log", None)
    try:
        while not ready.exists():
            assert proc.poll() is None
            time.sleep(0.05)
        assert affinity_of(proc.pid)["cpus_allowed_list"] == cpu_list(USABLE)
        assert pin(proc.pid, USABLE[:1]) == 4
        seen = affinity_of(proc.pid)
        assert seen == {"cpus_allowed_list": cpu_list(USABLE[:1]), "threads": 4, "threads_elsewhere": 0}
    finally:
        stop_all([proc])


def test_cpu_lists_read_and_write_like_the_kernel() -> None:
    assert cpu_list([5, 0, 1, 2]) == "0-2,5" and cpu_list([3]) == "3" and cpu_list([]) == ""
    assert parse_cpu_list("0-2,5\n") == [0, 1, 2, 5] and parse_cpu_list("7") == [7]


# -- the report's arithmetic -----------------------------------------------------------------------
def _job(fresh: float, rows: float, step_s: float, vote_s: float) -> dict[str, Any]:
    return {"fresh_images_per_s": fresh, "rows_per_s": rows, "steps_per_s": 1.0, "step_s_mean": step_s,
            "collective_s_per_step": vote_s, "peak_rss_mib": [1000.0], "window_s": 40.0,
            "threads_per_worker": 2}


def _results() -> dict[str, Any]:
    on = {"1": _job(30.0, 40.0, 0.375, 0.0), "2": _job(48.0, 64.0, 0.5, 0.004)}  # binary fractions: exact
    off = {"1": _job(40.0, 40.0, 0.25, 0.0), "2": _job(72.0, 72.0, 0.3125, 0.003)}
    allreduce = summarise([{"payload_bytes": 2_000_000, "tensors": 40, "times_s": [0.010, 0.020, 0.012]},
                           {"payload_bytes": 2_000_000, "tensors": 40, "times_s": [0.011, 0.015, 0.030]}])
    return {"command": "stream-trainer bench --workers 1,2 --cores-per-worker 2", "seconds": 1.0,
            "machine": {"device": "CPU: x, 6 cores", "nproc": 6, "memory_gib": 1.0, "versions": {}},
            "load_average_before": [0, 0, 0], "load_average_after": [0, 0, 0],
            "workload": {"messages": 4000, "distinct_images": 500, "message_image_px": 320, "partitions": 4,
                         "image_size": 128, "batch_size_per_worker": 16, "replay_size_mib": 64.0, "cores": 6,
                         "cores_per_worker": 2},
            "placement": plan([1, 2], 2, usable=[0, 1, 2, 3, 4, 5]).describe("local"),
            "jobs": on, "efficiency": efficiency(on), "rows_efficiency": efficiency(on, "rows_per_s"),
            "replay_off": {"jobs": off, "efficiency": efficiency(off),
                           "rows_efficiency": efficiency(off, "rows_per_s")},
            "gradient_allreduce": {"2": allreduce}}


def test_gradient_all_reduce_rounds_take_their_slowest_worker() -> None:
    a = _results()["gradient_allreduce"]["2"]
    assert a["rounds"] == 3 and a["median_s"] == pytest.approx(0.020)  # rounds: 0.011, 0.020, 0.030
    assert a["mean_s"] == pytest.approx(0.061 / 3) and a["per_worker_median_s"] == [0.012, 0.015]


def test_per_core_efficiency_and_step_costs_from_fabricated_jobs() -> None:
    rows = {(r["replay"], r["workers"]): r for r in per_core_rows(_results())}
    two_on, two_off = rows[("as configured", 2)], rows[("off", 2)]
    assert two_on["efficiency"] == pytest.approx(48 / (2 * 30)) and two_on["rows_efficiency"] == pytest.approx(0.8)
    assert two_off["efficiency"] == pytest.approx(0.9)
    assert two_on["step_added_s"] == 0.125 and two_off["step_added_s"] == 0.0625
    assert two_on["allreduce_s"] == two_off["allreduce_s"] == pytest.approx(0.020)
    assert two_on["vote_s_per_step"] == 0.004
    assert rows[("as configured", 1)]["efficiency"] is None and rows[("off", 1)]["step_added_s"] is None
    table = per_core_markdown(_results())
    assert "| as configured | 2 | 48.0 | 64.0 | 1.000 | 500.00 | 4.00 | 20.00 | 125.00 | 0.800 | 0.800 |" in table
    assert "| off | 2 | 72.0 | 72.0 | 1.000 | 312.50 | 3.00 | 20.00 | 62.50 | 0.900 | 0.900 |" in table
    assert "worker 0: 0-1; worker 1: 2-3" in table and "cores 4-5, which no worker uses" in table
    assert "3 rounds of 2.00 MB in 40 float32 tensors" in table


# -- end to end (slow) -----------------------------------------------------------------------------
@pytest.mark.faults
@pytest.mark.slow  # four jobs of pinned workers and the all-reduce timers: minutes on 2 busy cores
@pytest.mark.timeout(900)
def test_quick_per_core_bench_pins_every_worker_and_reports_both_replay_modes(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    from tests.test_bench import QuickRun

    results = QuickRun(kafka_bootstrap, tmp_path, "--workers", "1,2", "--cores-per-worker", "1").result(
        timeout_s=880)
    assert "--cores-per-worker 1" in results["command"]
    place = results["placement"]
    assert place["workers"] == [cpu_list(USABLE[:1]), cpu_list(USABLE[1:2])]
    for jobs in (results["jobs"], results["replay_off"]["jobs"]):
        for n, job in jobs.items():
            assert job["threads_per_worker"] == 1 and job["fresh_images_per_s"] > 0
            assert job["cores"] == place["workers"][:int(n)]
            # What the kernel said during the window, every thread of every worker.
            for cores, seen in zip(job["cores"], job["affinity"], strict=True):
                assert seen["cpus_allowed_list"] == cores and seen["threads_elsewhere"] == 0, seen
    assert results["jobs"]["2"]["collective_s_per_step"] > 0
    assert results["replay_off"]["jobs"]["2"]["replayed_rows_per_s"] == 0 < results["jobs"]["2"]["replayed_rows_per_s"]
    assert set(results["efficiency"]) == set(results["replay_off"]["efficiency"]) == {"2"}
    a = results["gradient_allreduce"]["2"]
    assert a["rounds"] == 50 and a["median_s"] > 0 and a["payload_bytes"] > 0
