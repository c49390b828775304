"""Scenario 6: the soak's verdict (pure), and a short real soak (slow; ``make soak`` runs 30 min)."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from faultlib import ROOT, child_env

from stream_trainer.workbench.soak import (
    MAX_SLOPE_MIB_PER_HOUR,
    MIN_STEADY_S,
    Sample,
    shortest_judged_minutes,
    slope_mib_per_hour,
    verdict,
)
from stream_trainer.workbench.soak.faults import KINDS, schedule
from stream_trainer.workbench.soak.judge import TOLERANCES, judge_messages, judge_resources
from stream_trainer.workbench.soak.judge import verdict as chaos_verdict
from stream_trainer.workbench.soak.probe import Sample as ChaosSample


def _series(minutes: float, rss: Callable[[float], float]) -> list[Sample]:
    return [Sample(float(t), rss(t), 100.0, float(t)) for t in range(0, int(minutes * 60) + 1, 5)]


def _leak(minutes: float, mib_per_hour: float) -> list[Sample]:
    """A steep warm-up, then a steady leak at ``mib_per_hour`` under +-0.5 MiB of sample noise."""
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, int(minutes * 60) // 5 + 1)
    return _series(minutes, lambda t: min(700.0, 200.0 + 2 * t) + mib_per_hour * t / 3600.0 + noise[int(t) // 5])


@pytest.mark.faults
def test_flat_memory_after_warm_up_passes_even_with_a_steep_warm_up() -> None:
    samples = _series(30, lambda t: min(700.0, 200.0 + 2 * t) + (1.5 if t % 10 else -1.5))
    result = verdict(samples, duration_s=30 * 60)
    assert result["flat"], result
    assert abs(result["slope_mib_per_hour"]) < 1.0


@pytest.mark.faults
def test_memory_growing_after_warm_up_fails() -> None:
    samples = _series(30, lambda t: 700.0 + t / 30.0)  # 2 MiB per minute: 120 MiB/h
    result = verdict(samples, duration_s=30 * 60)
    assert not result["flat"], result
    assert slope_mib_per_hour(samples) == pytest.approx(120.0)


@pytest.mark.faults
def test_a_leak_just_above_the_stated_limit_fails_and_one_just_below_passes() -> None:
    assert MAX_SLOPE_MIB_PER_HOUR == 5.0  # the figure docs/reliability.md states
    above = verdict(_leak(30, MAX_SLOPE_MIB_PER_HOUR * 1.1), duration_s=30 * 60)
    below = verdict(_leak(30, MAX_SLOPE_MIB_PER_HOUR * 0.9), duration_s=30 * 60)
    assert above["verdict"] == "growing" and not above["flat"], above
    assert below["verdict"] == "flat" and below["flat"], below
    assert above["slope_mib_per_hour"] == pytest.approx(5.5, abs=0.3)


@pytest.mark.faults
def test_the_limit_is_a_rate_the_same_for_a_long_run() -> None:
    # Two hours at 6 MiB/h: 11 MiB after the warm-up, small next to the RSS, still a leak.
    assert verdict(_leak(120, 6.0), duration_s=120 * 60)["verdict"] == "growing"
    assert verdict(_leak(120, 4.0), duration_s=120 * 60)["verdict"] == "flat"


@pytest.mark.faults
def test_a_run_too_short_to_judge_is_not_called_flat() -> None:
    result = verdict(_series(10, lambda t: 700.0), duration_s=10 * 60)  # perfectly flat, yet too short
    assert result["verdict"] == "too_short" and not result["flat"], result
    assert result["steady_s"] < MIN_STEADY_S
    assert shortest_judged_minutes() == 25.0
    assert verdict(_leak(25, 0.0), duration_s=25 * 60)["verdict"] == "flat"


@pytest.mark.faults
@pytest.mark.slow
def test_soak_command_writes_the_rss_plot_and_report(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "soak", "--minutes", "2",
                           "--workdir", str(tmp_path)], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=600)
    # Two minutes run every part of the soak but are too short for a verdict, which exits 1.
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert "slope after warm-up" in proc.stdout and "too short to judge" in proc.stdout
    assert "FAILED" not in proc.stdout, proc.stdout
    report = json.loads((tmp_path / "rss.json").read_text())
    assert report["verdict"] == "too_short" and report["problem"] == ""
    assert report["trainer_steps"] > 0 and len(report["samples"]) >= 20
    assert (tmp_path / "rss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the chaos soak (``stream-trainer soak --chaos``) ----------------------------------------------

HOUR_PHASES = [(0.0, 1800.0), (1800.0, 3600.0)]  # the 60-minute run: one worker, then two


def _chaos_samples(value: Callable[[float, int], float | None], field: str = "rss_mib",
                   restarts_every_s: float = 400.0) -> list[ChaosSample]:
    """Both phases of a 60-minute run sampled every 5 s; every worker restarts every ``restarts_every_s``."""
    out = []
    for phase, (start, end) in enumerate(HOUR_PHASES):
        for worker in range(phase + 1):
            for t in np.arange(start, end, 5.0):
                up = (t - start) % restarts_every_s
                v = value(float(t), worker)
                values = {"rss_mib": 700.0, "threads": 40, "fds": 60, "consumers": 2.0, "traces": 9.0, "step": t}
                values[field] = v
                out.append(ChaosSample(float(t), phase, worker, 1000 + worker, float(up), **values))  # type: ignore[arg-type]
    return out


def _noise(t: float, worker: int) -> float:
    return float(np.random.default_rng(int(t) * 3 + worker).uniform(-2.0, 2.0))


@pytest.mark.faults
def test_chaos_verdict_flat_resources_across_restarts_pass() -> None:
    samples = _chaos_samples(lambda t, w: 700.0 + _noise(t, w))
    resources = judge_resources(samples, HOUR_PHASES)
    assert {r["state"] for r in resources.values()} == {"flat"}, resources
    assert resources["rss_mib"]["series"]["phase1/worker1"]["slope_per_hour"] is not None  # judged on 15 min
    messages = judge_messages({(0, o) for o in range(100)}, Counter({(0, o): 1 for o in range(100)}), {}, {}, 20)
    assert chaos_verdict(resources, messages, [])["passed"]


@pytest.mark.faults
@pytest.mark.parametrize(("mib_per_hour", "state"), [(40.0, "growing"), (25.0, "growing"), (12.0, "flat")])
def test_chaos_verdict_an_rss_leak_over_the_stated_rate_fails(mib_per_hour: float, state: str) -> None:
    assert TOLERANCES["rss_mib"].max_slope_per_hour == 20.0  # the figure docs/reliability.md states
    samples = _chaos_samples(lambda t, w: 700.0 + mib_per_hour * t / 3600 + _noise(t, w))
    resources = judge_resources(samples, HOUR_PHASES)
    assert resources["rss_mib"]["state"] == state, resources["rss_mib"]
    assert chaos_verdict(resources, judge_messages(set(), Counter(), {}, {}, 0), [])["passed"] == (state == "flat")


@pytest.mark.faults
def test_chaos_verdict_a_thread_leak_fails_on_the_peaks_even_in_a_short_run() -> None:
    phases = [(0.0, 150.0), (150.0, 300.0)]  # the 5-minute run: no slope is judged, nor RSS (warm-up)
    samples = [ChaosSample(float(t), 0, 0, 1, float(t), 700.0 + 2 * t, 40 + t // 5, 60, None, None, None)
               for t in range(0, 150, 5)]
    result = judge_resources(samples, phases)
    assert result["threads"]["state"] == "growing", result["threads"]
    assert result["threads"]["series"]["phase0/worker0"]["slope_per_hour"] is None
    assert result["rss_mib"]["state"] == "not_judged" and result["fds"]["state"] == "flat", result


@pytest.mark.faults
def test_chaos_verdict_a_leaked_reader_per_fault_fails_and_a_missing_gauge_is_null() -> None:
    leaking = _chaos_samples(lambda t, w: 2.0 + (t % 1800) // 45, field="consumers", restarts_every_s=4000)
    assert judge_resources(leaking, HOUR_PHASES)["consumers"]["state"] == "growing"
    threads = _chaos_samples(lambda t, w: 40.0 + (t % 1800) // 45, field="threads", restarts_every_s=4000)
    assert judge_resources(threads, HOUR_PHASES)["threads"]["state"] == "growing"
    missing = _chaos_samples(lambda t, w: None, field="consumers")
    resources = judge_resources(missing, HOUR_PHASES)
    assert resources["consumers"]["state"] == "not_recorded" and resources["rss_mib"]["state"] == "flat"


@pytest.mark.faults
def test_chaos_threads_are_judged_less_tensorflows_collective_watchdogs() -> None:
    # A two-worker job: TensorFlow's watchdogs swing by hundreds with the round rate (two threads
    # per collective op for peer_timeout_s), here faster rounds in the last quarter (a backlog after
    # a fault); the process's own threads stay at 120.
    def watchdogs(t: float) -> float:
        return 600.0 + (300.0 if t >= 1350 else 0.0) + 50.0 * np.sin(t / 37.0)

    def job(leak_per_fault: float) -> list[ChaosSample]:
        return [ChaosSample(float(t), 0, w, 1000 + w, float(t), 700.0, 120 + watchdogs(t) + leak_per_fault * (t // 45),
                            60, 2.0, 9.0, t, watchdogs(t)) for w in (0, 1) for t in range(0, 1800, 5)]
    phases = [(0.0, 1800.0)]
    flat = judge_resources(job(0.0), phases)["threads"]
    assert flat["state"] == "flat", flat
    assert flat["series"]["phase0/worker0"]["last_quarter_peak"] == pytest.approx(120.0)
    assert judge_resources(job(1.0), phases)["threads"]["state"] == "growing"  # one thread kept per fault
    raw = [ChaosSample(s.t_s, s.phase, s.worker, s.pid, s.up_s, s.rss_mib, s.threads, s.fds, s.consumers, s.traces,
                       s.step) for s in job(0.0)]  # without the gauge the raw count is judged: a false alarm
    assert judge_resources(raw, phases)["threads"]["state"] == "growing"
    # The last scrape of a worker that is exiting (its peer was lost) gets /proc but not /metrics:
    # its raw count is not the count less watchdogs (the 60-minute run: 647 after 162 all along).
    dying = job(0.0)
    last = max(range(len(dying)), key=lambda i: (dying[i].worker == 0, dying[i].t_s))
    s = dying[last]
    dying[last] = ChaosSample(s.t_s, s.phase, s.worker, s.pid, s.up_s, s.rss_mib, s.threads, s.fds, s.consumers,
                              s.traces, s.step)
    assert judge_resources(dying, phases)["threads"]["state"] == "flat"


@pytest.mark.faults
def test_chaos_resources_are_judged_between_added_partitions() -> None:
    # One worker reading 6, then 8 partitions (added at 20.5 and 24.5 min): +1 consumer and +8
    # threads per reader is what more partitions cost, not a leak; one consumer kept per fault is.
    added = [1230.0, 1470.0]

    def readers(t: float) -> int:
        return 6 + sum(1 for a in added if t >= a + 10)  # a new reader starts within the metadata refresh

    def run(leak_per_fault: float) -> list[ChaosSample]:
        return [ChaosSample(float(t), 0, 0, 1000, float(t), 700.0, 40 + 8 * readers(t), 60 + 9 * readers(t),
                            readers(t) + leak_per_fault * (t // 45), 9.0, t) for t in range(0, 1800, 5)]
    phases = [(0.0, 1800.0)]
    plain = judge_resources(run(0.0), phases)  # judged as one piece: the partitions look like a leak
    assert plain["consumers"]["state"] == "growing", plain["consumers"]
    pieces = judge_resources(run(0.0), phases, added)
    assert {pieces[k]["state"] for k in ("threads", "fds", "consumers")} == {"flat"}, pieces
    assert set(pieces["consumers"]["series"]) == {"phase0/worker0/from0.0min", "phase0/worker0/from20.5min",
                                                  "phase0/worker0/from24.5min"}
    assert judge_resources(run(1.0), phases, added)["consumers"]["state"] == "growing"


@pytest.mark.faults
def test_chaos_verdict_skipped_duplicated_and_dead_lettered_offsets() -> None:
    topic = {(p, o) for p in (0, 1) for o in range(50)}
    bad = {(0, 10): "poison", (1, 20): "jpeg_bomb"}
    letters = {(0, 10): "parse", (1, 20): "image_decode"}  # a bomb counts with any reason
    trained = Counter(topic - set(bad))
    flat = judge_resources([], [(0.0, 60.0)])

    def passed(trained: Counter[tuple[int, int]], letters: dict[tuple[int, int], str], bound: int = 20) -> bool:
        return bool(chaos_verdict(flat, judge_messages(topic, trained, bad, letters, bound), [])["passed"])

    assert passed(trained, letters)
    assert not passed(trained - Counter({(1, 33): 1}), letters), "one skipped offset must fail"
    assert not passed(trained + Counter({(0, o): 1 for o in range(20, 41)}), letters), "21 duplicates > 20"
    assert passed(trained + Counter({(0, o): 1 for o in range(20, 40)}), letters), "20 duplicates = the bound"
    assert not passed(trained, {**letters, (1, 3): "unknown"}), "a valid message dead-lettered must fail"
    assert not passed(trained, {(0, 10): "parse"}), "a bomb not dead-lettered must fail"
    assert not passed(trained + Counter({(0, 10): 1}), letters), "poison trained must fail"
    m = judge_messages(topic, trained - Counter({(1, 33): 1}), bad, letters, 20)
    assert m["skipped"] == 1 and m["skipped_first"] == [(1, 33)]


@pytest.mark.faults
def test_chaos_schedule_is_seeded_spaced_and_meets_every_kind_before_any_twice() -> None:
    plan = schedule(11, 3600.0)
    assert plan == schedule(11, 3600.0) and plan != schedule(12, 3600.0)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(plan)]
    assert all(29.9 <= g <= 60.1 for g in gaps) and 30.0 <= plan[0][0] <= 60.0
    assert {k for _, k in plan[:len(KINDS)]} == set(KINDS)
    assert 60 <= len(plan) <= 120


@pytest.mark.faults
def test_chaos_bombs_are_small_and_declare_billions_of_bytes() -> None:
    from PIL import Image
    from tensorflow.core.example import example_pb2

    from stream_trainer import wire
    from stream_trainer.workbench.soak import messages

    for kind, value in messages.bombs():
        ex = example_pb2.Example.FromString(value)
        image = ex.features.feature[wire.IMAGE_KEY].bytes_list.value[0]
        with pytest.raises(Image.DecompressionBombError):  # PIL itself refuses it
            Image.open(io.BytesIO(image))
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            width, height = Image.open(io.BytesIO(image)).size
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        assert len(value) < 4096 and width * height >= 20000 * 20000, (kind, len(value), width, height)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.timeout(1600)  # the soak's own limit is 1500 s: 5 minutes, two start-ups, a drain of up to 300 s
def test_five_minute_chaos_soak_passes_and_every_drawn_fault_happened(tmp_path: Path) -> None:
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"chaos soak: FAULT_SEED={seed}")
    out = tmp_path / "chaos"
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "soak", "--chaos", "--minutes", "5",
                           "--workers", "1,2", "--seed", str(seed), "--out", str(out)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=1500)
    print(proc.stdout)
    assert (out / "chaos.json").exists(), proc.stderr[-5000:]
    report = json.loads((out / "chaos.json").read_text())
    drawn = {f["kind"] for f in report["faults"]}
    not_done = [f for f in report["faults"] if not f.get("ok")]
    assert not not_done, f"faults drawn but not injected: {not_done}"
    assert len(drawn) >= 3, f"a 5-minute run draws 4-9 faults (one may wait past the end), this one {drawn}"
    assert report["messages"]["valid_offsets"] > 500 and report["samples"], report["messages"]
    if "trainer_kill" in drawn:
        assert report["exit_causes"].get("soak_kill", 0) >= 1 and report["restarts"] >= 1, report["exits"]
    assert (out / "chaos.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["verdict"]["passed"] and proc.returncode == 0, (report["verdict"], proc.stdout[-3000:],
                                                                  proc.stderr[-3000:])


@pytest.mark.faults
def test_chaos_soak_refuses_a_bad_worker_list_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from stream_trainer.cli import main

    assert main(["soak", "--chaos", "--workers", "1,zero", "--out", "/nonexistent/never-written"]) == 2
    assert "stream-trainer: error: --workers must list job sizes like 1,2" in capsys.readouterr().err


def _child_of(started: list[subprocess.Popen[bytes]]) -> Callable[[], object]:
    """Start a ``sleep`` that, like every broker node, dies with the thread that started it."""
    from stream_trainer.workbench.broker.node import die_with_parent

    def start() -> object:
        started.append(subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent))
        return started[-1].pid
    return start


@pytest.mark.faults
def test_a_broker_restarted_by_a_fault_outlives_the_fault_thread(tmp_path: Path) -> None:
    # The cause of a soak whose final read found no broker: a fault restarted it from its own
    # thread, and Linux SIGTERMed it the moment that thread ended. On the soak's main thread it lives.
    import threading

    from stream_trainer.workbench.soak.chaos import Soak

    soak = Soak(1, [1], 1, tmp_path)
    direct: list[subprocess.Popen[bytes]] = []
    via_main: list[subprocess.Popen[bytes]] = []
    fault = threading.Thread(target=_child_of(direct))
    fault.start()
    fault.join()
    fault = threading.Thread(target=lambda: soak.on_main(_child_of(via_main)))
    fault.start()
    soak._await_fault(fault, timeout_s=30)
    try:
        assert direct[0].wait(10) == -15  # SIGTERM: what the soak's broker got
        with pytest.raises(subprocess.TimeoutExpired):  # started on the main thread: still alive
            via_main[0].wait(3)
    finally:
        for p in direct + via_main:
            p.kill()
            p.wait()


# --- the chaos soak's evidence: per-process resources, duplicates by restart, exit messages --------


def _process(pid: int, start: float, end: float, rss: Callable[[float], float], phase: int = 1,
             worker: int = 1) -> list[ChaosSample]:
    """One trainer process sampled every 5 s from ``start`` to ``end``; ``rss(up_s)``."""
    return [ChaosSample(float(t), phase, worker, pid, float(t - start), rss(t - start), 40, 60, 2.0, 9.0, t)
            for t in np.arange(start, end, 5.0)]


@pytest.mark.faults
def test_chaos_rss_is_judged_per_process_not_across_restarts() -> None:
    """Phase 2's worker 1 in the 60-minute run: restarts every few minutes, each process warming up
    from nothing. Fitted across the restarts the warm-ups read as a leak; per process it is flat."""
    def warm(up: float) -> float:  # RSS climbs in the first minutes of every process, then settles
        return 650.0 + 150.0 * (1.0 - float(np.exp(-up / 150.0)))
    restarts = [1800.0, 2200.0, 2600.0, 2900.0, 3200.0, 3500.0]
    samples = [s for a, b in itertools.pairwise([*restarts, 3600.0]) for s in _process(int(a), a, b, warm)]
    samples += _process(99, 1800.0, 3600.0, lambda up: 700.0, worker=0)
    resources = judge_resources(samples, HOUR_PHASES)
    series = resources["rss_mib"]["series"]
    assert "phase1/worker1/pid2200" in series and "phase1/worker0" in series, sorted(series)
    assert resources["rss_mib"]["state"] == "flat", series
    assert series["phase1/worker1/pid3500"]["state"] == "not_judged", "a 100 s process is too short to judge"
    # The same samples judged as one series (the old judge): the warm-ups fitted as a slope.
    one = [ChaosSample(s.t_s, s.phase, s.worker, 1, s.up_s, s.rss_mib, s.threads, s.fds, s.consumers, s.traces,
                       s.step) for s in samples]
    assert judge_resources(one, HOUR_PHASES)["rss_mib"]["state"] == "growing"
    # A process that leaks is still caught within its own lifetime.
    leak = [*samples, *_process(7, 0.0, 1800.0, lambda up: 700.0 + 40.0 * up / 3600.0, phase=0, worker=0)]
    assert judge_resources(leak, HOUR_PHASES)["rss_mib"]["state"] == "growing"


def _logs(tmp_path: Path, runs: dict[str, list[tuple[int, int, int]]]) -> list[Path]:
    paths = []
    for name, lines in runs.items():
        path = tmp_path / f"{name}.log"
        path.write_text("".join(f"{p} {o} {s}\n" for p, o, s in lines))
        paths.append(path)
    return paths


@pytest.mark.faults
def test_chaos_duplicates_are_charged_to_the_restart_that_caused_them_by_cause(tmp_path: Path) -> None:
    from stream_trainer.workbench.soak.duplicates import attribute, trainings
    from stream_trainer.workbench.soak.judge import duplicate_failures

    topic = {(0, o) for o in range(60)}
    bad = {(0, 30): "random_bytes"}
    exits = [{"t_s": 100.0, "phase": 0, "run": 0, "worker": 0, "code": -9, "cause": "soak_kill", "error": ""}]

    def judged(run0: list[tuple[int, int, int]], run1: list[tuple[int, int, int]]) -> dict[str, object]:
        paths = _logs(tmp_path, {"phase0-run0-w0": run0, "phase0-run1-w0": run1})
        return attribute([(0, 0), (0, 1)], trainings(paths), exits, [], topic, bad, {0: 1}, 4, 5)

    # Run 0 trains offsets 0..27 at 4 per step (steps 1..7), checkpoints at 5, is killed at step 7.
    run0 = [(0, o, o // 4 + 1) for o in range(28)]
    # Run 1 restores step 5 (positions 20): trains 20..27 again, then on.
    run1 = [(0, o, 6 + (o - 20) // 4) for o in range(20, 40) if o != 30]
    d = judged(run0, run1)
    (r,) = d["restarts"]  # type: ignore[misc]
    assert (r["since_checkpoint"], r["held_back"], r["next_run_restored_step"]) == (8, 0, 5), r
    assert r["ended"][0]["cause"] == "soak_kill" and not duplicate_failures(d)  # type: ignore[arg-type]
    # A poison message at 30 holds the position: rows 31..35 trained before the checkpoint (step 9)
    # are read again after it; the attribution names what held them back.
    run0 = [(0, o, o // 4 + 1) for o in range(36) if o != 30]
    run1 = [(0, o, 10 + (o - 31) // 4) for o in range(31, 50)]
    d = judged(run0, run1)
    (r,) = d["restarts"]  # type: ignore[misc]
    assert r["held_back"] == 5 and r["held"][0]["behind"] == [{"offset": 30, "what": "random_bytes"}], r
    # More than E x B rows since the checkpoint fails, and so does one process training an offset twice.
    run0 = [(0, o, o // 4 + 1) for o in range(28)]
    run1 = [(0, o, 2 + (o - 4) // 4) for o in range(4, 40) if o != 30]  # restored step 1: 24 rows again
    assert any("over the bound 20" in f for f in duplicate_failures(judged(run0, run1)))  # type: ignore[arg-type]
    run0 = [(0, o, o // 4 + 1) for o in range(28)] + [(0, 3, 8)]
    failures = duplicate_failures(judged(run0, [(0, o, 8) for o in range(28, 40) if o != 30]))  # type: ignore[arg-type]
    assert failures and "trained twice by one process" in failures[0], failures


@pytest.mark.faults
def test_chaos_exits_keep_their_last_lines_and_a_killed_workers_peer_is_peer_lost(tmp_path: Path) -> None:
    """Worker 0 exits 2 naming the lost peer in the same second as the soak SIGKILLs worker 1: the
    soak, looking at worker 0 first, used to call that exit "unprompted"."""
    from stream_trainer.workbench.soak.job import Job, Worker

    job = Job.__new__(Job)
    job.phase, job.size, job.run, job.clock, job.drain_s = 1, 2, 1, lambda: 42.0, 45.0
    job.exits, job.restarts, job._draining_since = [], 0, None
    job._start = lambda: None  # type: ignore[method-assign]
    workers = []
    last_words = "print('stream-trainer: error: lost worker 1 of the job', file=sys.stderr); sys.exit(2)"
    for i, script in enumerate([f"import sys; print('loop: something', flush=True); {last_words}",
                                "import time; time.sleep(60)"]):
        log = tmp_path / f"w{i}.log"
        log.write_bytes(b"=== an earlier run's last words ===\nstream-trainer: error: not this one\n")
        with log.open("ab") as out:
            start = out.tell()
            proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
        workers.append(Worker(i, proc, 0, tmp_path / f"t{i}", log_path=log, log_from=start))
    job.workers = workers
    workers[0].proc.wait(30)
    workers[1].killed_by_soak = True
    workers[1].proc.kill()
    workers[1].proc.wait(30)
    job.poll()
    causes = {e["worker"]: e for e in job.exits}
    assert causes[1]["cause"] == "soak_kill" and causes[0]["cause"] == "peer_lost", job.exits
    assert causes[0]["error"] == "stream-trainer: error: lost worker 1 of the job", causes[0]
    assert causes[0]["last_lines"][-2:] == ["loop: something", "stream-trainer: error: lost worker 1 of the job"]
    assert causes[1]["error"] == "" and causes[1]["code"] == -9, causes[1]


@pytest.mark.faults
def test_chaos_a_slow_start_up_is_warm_up_not_growth() -> None:
    """A restarted trainer on a loaded machine (the 60-minute run's pid 7728): /metrics at 30 s, its
    readers and first step at 95 s (20 fds before, 60 after), killed at 160 s. Its warm-up counts from
    its first training step: too short to judge, never "growing"."""
    def sample(up: float) -> ChaosSample:
        step = None if up < 30 else (500.0 if up < 95 else 500.0 + (up - 95) // 5)
        fds = 20 if up < 95 else 60
        return ChaosSample(317.0 + up, 0, 0, 7728, up, 300.0 + up, 30 if up < 95 else 70, fds,
                           0.0 if up < 95 else 4.0, 9.0, step)
    samples = [sample(float(up)) for up in range(0, 160, 5)]
    resources = judge_resources(samples, [(317.0, 477.0)])
    assert {r["state"] for r in resources.values()} == {"not_judged"}, resources
    # Counted from the process's start instead, its readers starting read as a leak of 40 fds.
    early = [ChaosSample(s.t_s, 0, 0, 7728, s.up_s, s.rss_mib, s.threads, s.fds, s.consumers, s.traces, s.t_s)
             for s in samples]
    assert judge_resources(early, [(317.0, 477.0)])["fds"]["state"] == "growing"
