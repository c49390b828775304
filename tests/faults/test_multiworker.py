"""Issue 12: one model trained by several `stream-trainer run` processes (MultiWorkerMirroredStrategy).

Real processes on 127.0.0.1, a real broker, a 4-partition topic split between the workers. What
must hold, from Kafka, checkpoint and metrics state:

* the workers train in step: identical weights (each logs a checksum at stop), one checkpoint
  holding every partition's position, the group commit equal to it;
* a stop (SIGTERM to any worker) stops the whole job cleanly, also while the topic is idle (then
  no worker runs a step: ``stream_trainer_steps_total`` 0 on each, step and optimizer count 0 saved);
* an idle worker never stalls the others (it joins steps with zero-weight rows, counted);
* a lost worker (SIGKILL, or SIGSTOP: hung) makes the survivors exit 2 in one line naming it
  (``worker N (host:port)``) within a stated bound; the checkpoint is honest (its weights hold
  exactly ``range(position)`` of every partition), and a restart re-trains exactly what the killed
  job trained at or above the checkpoint's positions, skipping nothing; a small variant (kill,
  honesty) runs in ``make test``;
* a restart with a different number of workers resumes every partition from the checkpoint, and
  every worker then holds the checkpoint's weights (the chief's broadcast) and the learning rate
  of its own job's size;
* chief-only work longer than the peer timeout (the first eval-topic read) and a two-worker
  rolling update (the new chief waiting to claim) lose no worker;
* workers with different collective settings, and a worker started alone, exit 2 with one line.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultlib import (
    BATCH,
    CHECKPOINT_EVERY,
    Program,
    Rig,
    SavedCheckpoint,
    TrainedLine,
    committed_offsets,
    latest_checkpoint,
    log_ends,
    make_rig,
    metric,
    missing_offsets,
    read_trained,
    scrape,
)
from observed_trainer import checkpoint_checksum, optimizer_iterations
from workerlib import (
    PARTITIONS,
    addresses,
    assert_honest,
    by_partition,
    in_weights,
    restored,
    start_workers,
)

from stream_trainer.config import KafkaConfig, ModelConfig
from stream_trainer.kafka import Cluster
from tests.pets import produce_pets

# After a kill a worker re-trains what it trained after the last checkpoint: at most one
# checkpoint interval of its own batches (fresh rows are trained oldest first, in order).
DUPLICATE_BOUND_PER_WORKER = CHECKPOINT_EVERY * BATCH
# A killed worker: TensorFlow's coordination heartbeat notices it (measured 0.3-6.3 s before the
# naming probe), then up to 2 s of probing which peers still answer, then the exit.
DETECTION_BOUND_S = 20
# A hung (SIGSTOPped) worker answers nothing: the survivor's collective fails at the peer timeout
# or earlier, when TensorFlow's coordination service misses the hung worker's heartbeats
# (measured 9.8 s for a hung worker, 12.5 s for a hung chief, with a 15 s peer timeout, load ~22
# on 2 cores); the naming probe then waits up to 2 s for an answer, and the process exits.
HUNG_PEER_TIMEOUT_S = 15
HUNG_BOUND_S = HUNG_PEER_TIMEOUT_S + 15


@pytest.fixture()
def job(tmp_path: Path, kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Rig]:
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_"))[:20].strip("-")
    rig = make_rig(tmp_path, kafka_bootstrap, partitions=PARTITIONS, prefix=prefix)
    try:
        yield rig
    finally:
        rig.stop_all()


def _checksums(program: Program) -> set[str]:
    return set(re.findall(r"model weights checksum (\w+)", "".join(program.output)))


def _produce(rig: Rig, name: str, **dotted: Any) -> Program:
    return rig.producer(rig.write_config(f"{name}.yaml", rig.settings(**dotted)), name)


@pytest.mark.faults
def test_two_workers_train_in_step_and_checkpoint_every_partition(job: Rig) -> None:
    producer = _produce(job, "producer", producer__passes=1, producer__rate=0, producer__source__count=240)
    assert producer.proc.wait(120) == 0, job.logs()
    workers = start_workers(job, 2, "a", trainer__loop__max_steps=25)
    for program, _, _ in workers:
        assert program.proc.wait(240) == 0, f"{program.name} failed{job.logs()}"
    sums = [_checksums(p) for p, _, _ in workers]
    assert len(sums[0]) == 1 and sums[0] == sums[1], f"weights differ between workers: {sums}"
    trained = [{p for p, _, _ in read_trained(log)} for _, log, _ in workers]
    assert trained == [{0, 2}, {1, 3}], "each worker trains only its own partitions"
    final = latest_checkpoint(job.checkpoint_dir)
    assert final is not None and final.step == 25 and sorted(final.positions) == [0, 1, 2, 3]
    for i, (_, log, _) in enumerate(workers):
        counts = Counter((p, o) for p, o, _ in read_trained(log))
        for p in (i, i + 2):  # the checkpoint's position = exactly what was trained, in order
            assert final.positions[p] == len([1 for q, _ in counts if q == p]), (p, final)
        assert all(n == 1 for n in counts.values()), f"worker {i} trained an offset twice"
    # As sets: what both workers trained is exactly range(position) of every partition.
    assert_honest({(p, o) for _, log, _ in workers for p, o, _ in read_trained(log)}, final)
    assert committed_offsets(job.bootstrap, job.group, job.topic, PARTITIONS) == final.positions
    # One job, one TensorBoard run: both workers are given the same tensorboard_dir, only the chief writes.
    events = [p.name for p in (job.tmp / "tensorboard").glob("events.out.tfevents.*")]
    chief, other = (program.proc.pid for program, _, _ in workers)
    assert events and all(f".{chief}." in name and f".{other}." not in name for name in events), (events, chief, other)


@pytest.mark.faults
def test_sigterm_to_one_worker_stops_an_idle_job_with_one_checkpoint(job: Rig) -> None:
    workers = start_workers(job, 2, "idle")
    ports = [port for _, _, port in workers]
    # Both are in their loop once they vote (the collective histogram counts every vote).
    job.wait_until(lambda: all(metric(scrape(p), "stream_trainer_collective_seconds_count") > 3 for p in ports),
                   180, "both workers voting", alive=tuple(p for p, _, _ in workers))
    # Every worker voted and nobody had a row: no worker ran a step (no optimizer update anywhere).
    for i, port in enumerate(ports):
        text = scrape(port)
        assert metric(text, "stream_trainer_skipped_steps_total") > 0, f"worker {i}: no skipped vote in {text[:300]!r}"
        assert re.search(r"^stream_trainer_steps_total(\{[^}]*\})? 0\.0$", text, re.M), (
            f"worker {i} ran {metric(text, 'stream_trainer_steps_total')} steps in an idle job")
    t0 = time.monotonic()
    assert workers[1][0].stop(timeout_s=30) == 0, job.logs()
    assert workers[0][0].stop(timeout_s=30) == 0, job.logs()  # already on its way out
    took = time.monotonic() - t0
    final = latest_checkpoint(job.checkpoint_dir)
    assert final is not None and final.positions == dict.fromkeys(range(PARTITIONS), 0)
    assert final.step == 0, f"an idle job stepped: {final}"
    assert optimizer_iterations(final.path) == 0, "the optimizer updated the weights of an idle job"
    chief = "".join(workers[0][0].output)
    assert chief.count("INFO stream_trainer.loop.train_loop: checkpoint ") == 1, "exactly one checkpoint"
    assert "stopped by another worker" in chief
    assert took < 10, f"the job took {took:.1f} s to stop"


@pytest.mark.faults
@pytest.mark.slow
def test_an_idle_worker_never_stalls_the_job_and_its_zero_weight_steps_are_counted(job: Rig) -> None:
    workers = start_workers(job, 2, "skew")
    ports = [port for _, _, port in workers]
    alive = tuple(p for p, _, _ in workers)
    job.wait_until(lambda: all(metric(scrape(p), "stream_trainer_collective_seconds_count") > 3 for p in ports),
                   180, "both workers voting", alive=alive)
    # 20 s of messages for worker 0's partitions (0 and 2) only; worker 1's stay idle.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for p in (0, 2):
            produce_pets(job.bootstrap, job.topic, 4, seed=int(time.monotonic()), size=40, partition=p)
        job.require_alive(*alive)
        time.sleep(1.0)
    job.wait_until(lambda: metric(scrape(ports[0]), "stream_trainer_images_trained_total") >= 60, 120,
                   "worker 0 to train its partitions", alive=alive)
    idle = scrape(ports[1])
    steps = metric(idle, "stream_trainer_steps_total")
    assert steps >= 10, f"the job did not keep stepping ({steps} steps)"
    assert metric(idle, "stream_trainer_idle_steps_total") >= 10, "worker 1's zero-weight steps are not counted"
    assert metric(idle, "stream_trainer_images_trained_total") == 0
    # Now worker 1's partitions get messages too; nothing anywhere is lost.
    for p in (1, 3):
        produce_pets(job.bootstrap, job.topic, 20, seed=p, size=40, partition=p)
    ends = log_ends(job.bootstrap, job.topic)
    job.wait_until(lambda: not missing_offsets(
        Counter((p, o) for _, log, _ in workers for p, o, _ in read_trained(log)), ends), 180,
        f"every offset below {ends} trained", alive=alive)
    for program, _, _ in workers:
        assert program.stop() == 0, job.logs()


def _survivor_exits_naming(job: Rig, survivor: Program, victim: int, addrs: list[str], bound_s: float,
                           since: float) -> float:
    """The survivor exits exactly 2 within ``bound_s`` of ``since``, in one line naming the lost worker."""
    try:
        survivor.proc.wait(max(0.0, since + bound_s - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the surviving worker did not exit within {bound_s} s{job.logs()}")
    took = time.monotonic() - since
    assert survivor.stop() == 2, job.logs()  # already gone: this only collects the rest of its output
    errors = [line for line in survivor.output if "stream-trainer: error:" in line]
    assert len(errors) == 1 and f"lost worker {victim} ({addrs[victim]})" in errors[0], job.logs()
    assert "Graph execution error" not in errors[0] and "still answering" not in errors[0], errors[0]
    return took


def _trained(logs: list[Path]) -> list[TrainedLine]:
    return [line for log in logs for line in read_trained(log)]


def _trained_past_a_checkpoint(job: Rig, logs: list[Path]) -> bool:
    """A checkpoint exists and a later step trained rows: its honesty then has rows on both sides."""
    ckpt = latest_checkpoint(job.checkpoint_dir)
    return ckpt is not None and any(s > ckpt.step for _, _, s in _trained(logs))


def _mid_interval(job: Rig, logs: list[Path]) -> bool:
    """A step past the newest checkpoint is trained, and neither the last nor the next step saves.

    A kill now loses work: a save that may still be under way is for an older step (the save at a
    multiple of CHECKPOINT_EVERY follows that step's trained lines, so the newest lines alone would
    let a kill land during the save that holds them), and the next save needs a step and a gather
    with the killed worker."""
    ckpt = latest_checkpoint(job.checkpoint_dir)
    last = max((s for _, _, s in _trained(logs)), default=0)
    return ckpt is not None and last > ckpt.step and last % CHECKPOINT_EVERY not in (0, CHECKPOINT_EVERY - 1)


@pytest.mark.faults
def test_a_lost_worker_stops_a_small_job_within_the_bound_with_an_honest_checkpoint(job: Rig) -> None:
    # The fast variant (make test): 4 batches per partition produced up front, so each worker trains
    # at least 8 steps, saves at step 5 and trains on past it; then worker 1 is killed.
    for p in range(PARTITIONS):
        produce_pets(job.bootstrap, job.topic, 4 * BATCH, seed=p, size=40, partition=p)
    addrs = addresses(2)
    workers = start_workers(job, 2, "fast", addrs)
    logs = [log for _, log, _ in workers]
    job.wait_until(lambda: _trained_past_a_checkpoint(job, logs), 180, "training past a checkpoint",
                   alive=tuple(p for p, _, _ in workers))
    workers[1][0].kill()
    took = _survivor_exits_naming(job, workers[0][0], 1, addrs, DETECTION_BOUND_S, time.monotonic())
    ckpt = latest_checkpoint(job.checkpoint_dir)
    assert ckpt is not None and ckpt.step >= CHECKPOINT_EVERY, ckpt
    assert_honest(in_weights(_trained(logs), ckpt), ckpt)
    print(f"fast multi-worker kill: the chief exited 2 after {took:.1f} s; checkpoint step {ckpt.step}")


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "chief"])
def test_a_killed_worker_stops_the_job_and_a_restart_skips_nothing(job: Rig, victim: int) -> None:
    producer = _produce(job, "producer", producer__rate=20)
    addrs = addresses(2)
    first = start_workers(job, 2, "a", addrs)
    logs_a = [log for _, log, _ in first]
    job.wait_until(lambda: all(len(read_trained(log)) >= 40 for log in logs_a), 240, "both workers training",
                   alive=(producer, *(p for p, _, _ in first)))
    # Killed with work past its last checkpoint: what the restart must re-train is then not empty.
    job.wait_until(lambda: _mid_interval(job, logs_a), 120, "training between two checkpoints",
                   alive=(producer, *(p for p, _, _ in first)), interval_s=0.1)
    first[victim][0].kill()
    detected_s = _survivor_exits_naming(job, first[1 - victim][0], victim, addrs, DETECTION_BOUND_S,
                                        time.monotonic())
    ckpt = latest_checkpoint(job.checkpoint_dir)
    assert ckpt is not None
    held = in_weights(_trained(logs_a), ckpt)
    assert_honest(held, ckpt)
    print(f"multi-worker kill of worker {victim}: survivor exited 2 after {detected_s:.1f} s; checkpoint step "
          f"{ckpt.step}")

    second = start_workers(job, 2, "b")
    ends = log_ends(job.bootstrap, job.topic)
    logs_b = [log for _, log, _ in second]
    job.wait_until(lambda: not missing_offsets(Counter((p, o) for log in logs_b for p, o, _ in read_trained(log)),
                                               ends, ckpt.positions),
                   240, f"the restarted job to train everything below {ends}",
                   alive=(producer, *(p for p, _, _ in second)))
    for program, _, _ in second:
        assert program.stop() == 0, job.logs()
    producer.stop()
    run_a = Counter((p, o) for log in logs_a for p, o, _ in read_trained(log))
    run_b = Counter((p, o) for log in logs_b for p, o, _ in read_trained(log))
    assert not missing_offsets(run_a + run_b, ends), "skipped offsets"
    below = [(p, o) for (p, o) in run_b if o < ckpt.positions[p]]
    assert not below, f"the restart trained offsets below the checkpoint: {below[:10]}"
    retrained = sum(1 for key in run_b if key in run_a)
    assert retrained <= 2 * DUPLICATE_BOUND_PER_WORKER, (retrained, ckpt)
    print(f"multi-worker kill of worker {victim}: the restart re-trained {retrained} offsets (bound "
          f"{2 * DUPLICATE_BOUND_PER_WORKER}), skipped 0")
    # Exactly, as sets of offsets per partition: the restart re-trained what the killed job trained
    # at or above the checkpoint's positions (the work lost with the kill), and each partition's
    # offsets from the checkpoint's position up to the final one, once each.
    lost = by_partition((p, o) for (p, o) in run_a if o >= ckpt.positions[p])
    again = by_partition(set(run_b) & set(run_a))
    assert lost, f"the kill lost no work past checkpoint step {ckpt.step}: the exact re-train proves nothing"
    for p in range(PARTITIONS):
        want, got = lost.get(p, set()), again.get(p, set())
        assert got == want, (f"partition {p}: re-trained {sorted(got)[:20]}, lost with the kill {sorted(want)[:20]} "
                             f"(checkpoint {ckpt})")
    assert all(n == 1 for n in run_b.values()), "the restarted job trained an offset twice"
    final = latest_checkpoint(job.checkpoint_dir)
    assert final is not None and final.step > ckpt.step
    trained_b = by_partition(run_b)
    for p in range(PARTITIONS):
        assert trained_b.get(p, set()) == set(range(ckpt.positions[p], final.positions[p])), (p, ckpt, final)
    assert_honest(held | set(run_b), final)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker", "chief"])
def test_a_hung_worker_stops_the_job_naming_it(job: Rig, victim: int) -> None:
    # SIGSTOP: the process keeps its sockets (the kernel still accepts connections) but answers
    # nothing: no closed connection tells the survivor, only a timeout can.
    for p in range(PARTITIONS):
        produce_pets(job.bootstrap, job.topic, 2 * BATCH, seed=p, size=40, partition=p)
    addrs = addresses(2)
    workers = start_workers(job, 2, "hung", addrs, trainer__cluster__peer_timeout_s=HUNG_PEER_TIMEOUT_S)
    job.wait_until(lambda: all(read_trained(log) for _, log, _ in workers), 180, "both workers training",
                   alive=tuple(p for p, _, _ in workers))
    hung = workers[victim][0]
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        took = _survivor_exits_naming(job, workers[1 - victim][0], victim, addrs, HUNG_BOUND_S, time.monotonic())
    finally:
        os.kill(hung.pid, signal.SIGCONT)
        hung.kill()
    print(f"worker {victim} stopped (SIGSTOP): the other exited 2 after {took:.1f} s "
          f"(peer_timeout_s {HUNG_PEER_TIMEOUT_S})")


@pytest.mark.faults
@pytest.mark.slow
def test_a_restart_with_another_worker_count_resumes_every_partition_from_the_checkpoint(job: Rig) -> None:
    producer = _produce(job, "producer", producer__passes=1, producer__rate=0, producer__source__count=300)
    assert producer.proc.wait(120) == 0, job.logs()
    trained: Counter[tuple[int, int]] = Counter()
    previous: SavedCheckpoint | None = None
    expected: tuple[int, str, int] | None = None  # read before the next run's saves sweep it away
    for run, (count, steps) in enumerate([(2, 12), (1, 12), (2, 12)]):
        # Each worker reports the weights it holds once restored (and broadcast): observed_trainer.py.
        workers = start_workers(job, count, f"r{run}", observe=True, trainer__loop__max_steps=steps)
        for program, _, _ in workers:
            assert program.proc.wait(240) == 0, f"{program.name} failed{job.logs()}"
        output = "".join(line for program, _, _ in workers for line in program.output)
        if previous is not None:
            for p, offset in previous.positions.items():
                assert f"partition {p} starts at offset {offset} (from checkpoint" in output, (run, p, output[-2000:])
        _assert_restored_weights(job, f"r{run}", count, expected)
        run_lines = Counter((p, o) for _, log, _ in workers for p, o, _ in read_trained(log))
        if previous is not None:
            assert not [k for k in run_lines if k[1] < previous.positions[k[0]]], "trained below the checkpoint"
        trained += run_lines
        saved = latest_checkpoint(job.checkpoint_dir)
        assert saved is not None and sorted(saved.positions) == [0, 1, 2, 3]
        # Each run trained, per partition, exactly the offsets from where it resumed to where it saved.
        starts = previous.positions if previous is not None else dict.fromkeys(range(PARTITIONS), 0)
        ran = by_partition(run_lines)
        for p in range(PARTITIONS):
            assert ran.get(p, set()) == set(range(starts[p], saved.positions[p])), (run, p, starts, saved)
        previous = saved
        expected = checkpoint_checksum(saved.path)
        assert expected[0] == saved.step
    assert previous is not None
    assert not missing_offsets(trained, previous.positions), "skipped offsets"
    assert sum(n - 1 for n in trained.values()) == 0, "a clean stop and restart duplicates nothing"


def _assert_restored_weights(job: Rig, run: str, count: int, checkpoint: tuple[int, str, int] | None) -> None:
    """Every worker of ``run`` held the same weights once restored: the checkpoint's (its ``checkpoint_checksum``),
    or with no checkpoint the chief's new ones."""
    held = [restored(job, run, i) for i in range(count)]
    assert all(h == held[0] for h in held), f"{run}: the workers hold different weights after the restore: {held}"
    # The learning rate is the job's own (trainer.cluster.learning_rate_scaling: sqrt), whatever the
    # number of workers that wrote the checkpoint.
    assert held[0].pop("learning_rate") == pytest.approx(ModelConfig().learning_rate * math.sqrt(count)), held
    if checkpoint is None:
        assert held[0]["step"] == 0, held
        return
    step, checksum, tensors = checkpoint
    assert held[0] == {"step": step, "checksum": checksum, "tensors": tensors}, (
        f"{run}: the weights after the restore are not the checkpoint's (step {step}, {checksum}, {tensors} tensors): "
        f"{held}")


@pytest.mark.faults
@pytest.mark.slow
def test_a_worker_started_alone_exits_2_naming_the_missing_worker(job: Rig) -> None:
    join_timeout_s = 10
    addrs = addresses(2)
    [(alone, _, _)] = start_workers(job, 2, "alone", addrs, only=(1,),
                                    trainer__cluster__join_timeout_s=join_timeout_s)
    job.wait_until(lambda: "for every worker to join" in "".join(alone.output), 120, "the worker waiting to join")
    waiting_at = time.monotonic()
    try:
        alone.proc.wait(join_timeout_s + 10)
    except Exception:
        pytest.fail(f"the lone worker did not exit within join_timeout_s + 10 s{job.logs()}")
    print(f"lone worker exited {alone.proc.returncode} after {time.monotonic() - waiting_at:.1f} s")
    assert alone.proc.returncode == 2, job.logs()
    last = [line for line in alone.output if "stream-trainer: error:" in line]
    assert len(last) == 1 and f"worker 0 ({addrs[0]}) did not join" in last[0], job.logs()


@pytest.mark.faults
def test_workers_that_disagree_on_a_collective_setting_both_exit_2_naming_it(job: Rig) -> None:
    addrs = addresses(2)
    workers = [*start_workers(job, 2, "cfg0", addrs, only=(0,)),
               *start_workers(job, 2, "cfg1", addrs, only=(1,), trainer__replay__size_mib=0)]
    for program, _, _ in workers:
        assert program.proc.wait(180) == 2, job.logs()
        last = [line for line in program.output if "stream-trainer: error:" in line]
        assert len(last) == 1 and f"trainer.replay.size_mib (worker 1 ({addrs[1]}) differs" in last[0], last
        assert "trainer.model" not in last[0]


@pytest.mark.faults
@pytest.mark.slow
def test_chief_only_work_longer_than_the_peer_timeout_loses_no_worker(job: Rig) -> None:
    # An empty eval topic: the chief's first evaluation waits eval_wait_s for it, alone, while the
    # other worker waits for the chief; that is three peer timeouts.
    peer_timeout_s = 8
    cluster = Cluster(KafkaConfig(bootstrap_servers=job.bootstrap))
    try:
        cluster.ensure_topics({f"{job.topic}-eval": 1})
    finally:
        cluster.close()
    producer = _produce(job, "producer", producer__passes=1, producer__rate=0, producer__source__count=120)
    assert producer.proc.wait(120) == 0, job.logs()
    workers = start_workers(job, 2, "slow-chief", trainer__loop__max_steps=10, trainer__loop__eval_every_steps=1000,
                            trainer__loop__eval_wait_s=3 * peer_timeout_s,
                            trainer__cluster__peer_timeout_s=peer_timeout_s)
    for program, _, _ in workers:
        assert program.proc.wait(240) == 0, f"{program.name} failed{job.logs()}"
    # The chief's first evaluation read waited eval_wait_s for the empty topic (scorer.py's line).
    assert f"eval topic '{job.topic}-eval' is empty; evaluation skipped" in "".join(workers[0][0].output)
    final = latest_checkpoint(job.checkpoint_dir)
    assert final is not None and final.step == 10


@pytest.mark.faults
@pytest.mark.slow
def test_an_export_longer_than_the_peer_timeout_loses_no_worker(job: Rig) -> None:
    # Every export of the chief (with its evaluation) is made three peer timeouts slower. The other
    # worker joins it as a keep-alive round; were it to go on to its next vote instead, it would wait
    # for the chief there and take it for lost. Checkpoints every 5 steps: exports before the end.
    peer_timeout_s = 8
    producer = _produce(job, "producer", producer__passes=1, producer__rate=0, producer__source__count=120)
    assert producer.proc.wait(120) == 0, job.logs()
    slow = ["--thread", "any", "--call", "stream_trainer.serve.export:Publisher.publish",
            "--kind", "slow", "--seconds", str(3 * peer_timeout_s)]
    workers = start_workers(job, 2, "slow-export", faults={0: slow}, trainer__loop__max_steps=15,
                            trainer__checkpoint__every_steps=5, trainer__checkpoint__every_seconds=0,
                            trainer__checkpoint__export_dir=str(job.tmp / "export"),
                            trainer__cluster__peer_timeout_s=peer_timeout_s)
    for program, _, _ in workers:
        assert program.proc.wait(300) == 0, f"{program.name} failed{job.logs()}"
    assert "FAULT INJECTED (slow)" in "".join(workers[0][0].output), job.logs()
    final = latest_checkpoint(job.checkpoint_dir)
    assert final is not None and final.step == 15
    assert (job.tmp / "export" / "latest").is_dir()


@pytest.mark.faults
@pytest.mark.slow
def test_a_two_worker_rolling_update_waits_for_the_old_job_and_takes_over_from_its_checkpoint(job: Rig) -> None:
    peer_timeout_s = 8
    producer = _produce(job, "producer", producer__rate=20)
    old = start_workers(job, 2, "old", trainer__cluster__peer_timeout_s=peer_timeout_s)
    logs_old = [log for _, log, _ in old]
    job.wait_until(lambda: all(len(read_trained(log)) >= 20 for log in logs_old), 240, "the old job training",
                   alive=(producer, *(p for p, _, _ in old)))
    new = start_workers(job, 2, "new", trainer__cluster__peer_timeout_s=peer_timeout_s)
    everyone = (producer, *(p for p, _, _ in old), *(p for p, _, _ in new))
    job.wait_until(lambda: "is in use by another trainer" in "".join(new[0][0].output), 180,
                   "the new chief waiting to claim", alive=everyone)
    # The new job's other worker waits with its chief (both passed the config agreement together)
    # for twice the peer timeout, while the old job trains on.
    trained_before = sum(len(read_trained(log)) for log in logs_old)
    time.sleep(2 * peer_timeout_s)
    job.require_alive(*everyone)
    assert sum(len(read_trained(log)) for log in logs_old) > trained_before, "the old job stopped training"
    logs_new = [log for _, log, _ in new]
    assert all(read_trained(log) == [] for log in logs_new), "the new job trained while the old one ran"
    assert old[1][0].stop() == 0, job.logs()  # one worker's SIGTERM stops the whole old job
    assert old[0][0].proc.wait(60) == 0, job.logs()
    handed_over = latest_checkpoint(job.checkpoint_dir)
    assert handed_over is not None
    ends = log_ends(job.bootstrap, job.topic)
    job.wait_until(lambda: not missing_offsets(Counter((p, o) for log in logs_new for p, o, _ in read_trained(log)),
                                               ends, handed_over.positions),
                   240, "the new job to take over and catch up", alive=(producer, *(p for p, _, _ in new)))
    for program, _, _ in new:
        program.stop()
    producer.stop()
    run_old = Counter((p, o) for log in logs_old for p, o, _ in read_trained(log))
    run_new = Counter((p, o) for log in logs_new for p, o, _ in read_trained(log))
    assert not missing_offsets(run_old + run_new, ends), "skipped offsets"
    assert not set(run_old) & set(run_new), "a clean hand-over trains nothing twice"


# Larger than the suite's 32 px / batch 4: at those shapes batch normalisation's moving statistics
# made some exports score far below the model in training mode (docs/reliability.md, known gaps).
LEARN_PX, LEARN_BATCH = 64, 8


def _eval_iou(export_dir: Path, rig: Rig) -> float:
    """Mean IoU of the newest export on the job's eval topic."""
    import keras

    from stream_trainer.config import KafkaConfig
    from stream_trainer.ingest.pipeline import decode_values
    from stream_trainer.kafka import Cluster
    from stream_trainer.quality.evaluate import classifier, confusion, read_eval_messages, scores

    cluster = Cluster(KafkaConfig(bootstrap_servers=rig.bootstrap))
    try:
        messages = read_eval_messages(cluster, f"{rig.topic}-eval", 1000, 5)
    finally:
        cluster.close()
    model = keras.models.load_model(export_dir / "latest" / "model.keras")
    cm, n = confusion(classifier(model), [{"image": b["image"], "mask": b["mask"]}
                              for b in decode_values([m.value for m in messages], LEARN_PX, 32)])
    assert n == len(messages) >= 40
    return scores(cm)[0]


@pytest.mark.faults
@pytest.mark.slow
def test_two_workers_learn_as_well_as_one_from_the_same_images(job: Rig) -> None:
    # Three passes over 576 training images: long enough for both jobs to leave the steep part of
    # the learning curve, where 2 workers' half as many (larger) steps lag by a wide, run-dependent
    # margin (after one pass at 32 px: 0.571 vs 0.827 in one run, 0.845 vs 0.827 in another).
    images = 640
    producer = _produce(job, "producer", producer__passes=3, producer__rate=0, producer__source__count=images,
                        producer__source__eval_fraction=0.1, producer__send_eval=True)
    assert producer.proc.wait(180) == 0, job.logs()
    total = sum(log_ends(job.bootstrap, job.topic).values())
    ious = {}
    for count in (1, 2):
        run = f"w{count}"
        workers = start_workers(job, count, run, trainer__replay__size_mib=0,
                                trainer__source__group_id=f"{job.group}-{run}",
                                trainer__checkpoint__dir=str(job.tmp / run / "ckpt"),
                                trainer__checkpoint__export_dir=str(job.tmp / run / "export"),
                                trainer__model__base_filters=8, trainer__model__learning_rate=0.003,
                                trainer__pipeline__image_size=LEARN_PX, trainer__pipeline__batch_size=LEARN_BATCH)
        logs = [log for _, log, _ in workers]
        job.wait_until(lambda logs=logs: sum(len(read_trained(log)) for log in logs) >= total, 300,
                       f"{count} worker(s) to train all {total} images", alive=tuple(p for p, _, _ in workers))
        for program, _, _ in workers:
            assert program.stop() == 0, job.logs()
        ious[count] = _eval_iou(job.tmp / run / "export", job)
    print(f"eval mean IoU after {total} images: 1 worker {ious[1]:.3f}, 2 workers {ious[2]:.3f}")
    # An absolute floor too: two equally broken jobs would pass the comparison (measured 0.879 / 0.890).
    assert min(ious.values()) >= 0.8, ious
    assert abs(ious[2] - ious[1]) <= 0.05, ious
