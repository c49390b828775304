"""Every way a running trainer ends: in bounded time, with one line, its checkpoint lock released.

Each scenario runs ``stream-trainer`` as a process (``faulty_trainer.py``: the real CLI with one
function replaced from outside) against the session's broker. A thread the trainer starts that
dies, an exception from the training step, a shutdown that hangs: the process must end within a
bound, print exactly one ``stream-trainer: error:`` line that says what happened, exit non-zero,
and leave the checkpoint directory (and the consumer group) to the next trainer.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from faultlib import Program, Rig, latest_checkpoint, lock_is_free

from tests.pets import produce_pets

PREFIX = "stream-trainer: error: "
EXIT_UNEXPECTED = 1
# From the fault to the process's end: the loop notices a dead thread within a round, then
# writes the final checkpoint and its export (about 10 s on 2 cores) and closes every part (each
# close bounded at 5 s).
EXIT_WITHIN_S = 45

# Every thread the trainer starts, and a function it calls in its own work: the fault is raised
# from there, so a thread that swallowed its own errors would fail this test too. One line each.
# Two run in every `make test`; the rest in `make test-faults` (the budget of the default run).
SUPERVISED = [
    pytest.param("committer", "stream_trainer.kafka.cluster:Cluster.keepalive", 2, id="committer"),
    pytest.param("kafka-watchdog", "stream_trainer.kafka.preflight:check", 2, id="watchdog", marks=pytest.mark.slow),
    pytest.param("kafka-reader-0", "stream_trainer.ingest.intake:Intake.put", 2, id="reader", marks=pytest.mark.slow),
    pytest.param("inbox-pump", "stream_trainer.ingest.intake:Intake._take", 2, id="inbox-pump", marks=pytest.mark.slow),
    pytest.param("feeder", "stream_trainer.ingest.feeder:Feeder._rows", 0, id="feeder", marks=pytest.mark.slow),
    pytest.param("partition-watch", "stream_trainer.kafka.cluster:Cluster.watermarks", 2, id="partition-watch",
                 marks=pytest.mark.slow),
    # The scenario's one malformed message gives the dead-letter worker its one re-read.
    pytest.param("dead-letter", "stream_trainer.kafka.cluster:Cluster.read_range", 0, id="dead-letter"),
]


def _faulty(rig: Rig, config: Path, thread: str, call: str, *options: str, cli: tuple[str, ...] = ()) -> Program:
    return rig.start("trainer", ["tests.faults.faulty_trainer", "--thread", thread, "--call", call, *options,
                                 "--set", "stream_trainer.app:WATCHDOG_INTERVAL_S=0.5",
                                 "--", "run", "--config", str(config), *cli])


def _ended(rig: Rig, trainer: Program, limit_s: float) -> tuple[int, str, float]:
    """Wait for the fault, then for the exit: (exit status, output, seconds from fault to exit)."""
    rig.wait_until(lambda: any("FAULT INJECTED" in line for line in trainer.output), 180, "the fault",
                   alive=(trainer,), interval_s=0.2)
    injected = time.monotonic()
    deadline = injected + limit_s
    while trainer.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    took = time.monotonic() - injected
    if trainer.alive:
        trainer.kill()
        pytest.fail(f"still running {limit_s:.0f} s after the fault{rig.logs()}")
    trainer.stop()  # collects the rest of the output
    return trainer.proc.returncode, "".join(trainer.output), took


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, f"a traceback:\n{output[-4000:]}"
    errors = [line for line in output.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1, f"expected one '{PREFIX}' line, got {len(errors)}:\n{output[-4000:]}"
    return errors[0]


def _wait_training(rig: Rig, trainer: Program) -> None:
    rig.wait_until(lambda: any(" | " in line and "steps/s" in line for line in trainer.output), 180,
                   "the loop's first status line", alive=(trainer,), interval_s=0.2)


@pytest.mark.faults
@pytest.mark.parametrize(("thread", "call", "after"), SUPERVISED)
def test_a_background_thread_that_dies_stops_the_trainer_with_one_line_naming_it(
        rig: Rig, thread: str, call: str, after: int) -> None:
    produce_pets(rig.bootstrap, rig.topic, 20, size=40, partition=0)
    poison = Producer({"bootstrap.servers": rig.bootstrap})
    poison.produce(rig.topic, value=b"not a tf.train.Example", partition=0)
    assert poison.flush(10) == 0
    produce_pets(rig.bootstrap, rig.topic, 20, size=40, seed=1, partition=0)
    config = rig.write_config("trainer.yaml", rig.settings())
    trainer = _faulty(rig, config, thread, call, "--after", str(after))
    rc, output, took = _ended(rig, trainer, EXIT_WITHIN_S)
    error = _one_error_line(output)
    assert error == f"{PREFIX}the {thread} thread died: RuntimeError: injected fault in {thread}", output[-3000:]
    assert rc == EXIT_UNEXPECTED, f"exit status {rc}:\n{output[-3000:]}"
    assert latest_checkpoint(rig.checkpoint_dir) is not None, "no final checkpoint"
    assert lock_is_free(rig.checkpoint_dir)
    print(f"{thread}: exit {rc} {took:.1f} s after the fault: {error}")


@pytest.mark.faults
def test_an_error_in_the_step_ends_the_process_in_one_line_and_the_next_trainer_takes_over(rig: Rig) -> None:
    produce_pets(rig.bootstrap, rig.topic, 80, size=40)
    config = rig.write_config("trainer.yaml", rig.settings(trainer__checkpoint__when_owned="fail"))
    trainer = _faulty(rig, config, "MainThread", "stream_trainer.learn.workers:Workers.step", "--kind", "oom",
                      "--after", "8")
    rc, output, took = _ended(rig, trainer, EXIT_WITHIN_S)
    error = _one_error_line(output)
    assert error.startswith(f"{PREFIX}unexpected ResourceExhaustedError: OOM when allocating tensor"), error
    assert "[[{{node unet/conv2d/Conv2D}}]] Hint:" in error, "the message is cut or not on one line"
    assert rc == EXIT_UNEXPECTED, f"exit status {rc}:\n{output[-3000:]}"
    assert lock_is_free(rig.checkpoint_dir)
    # What a kill during a save leaves behind: the replacement removes it once it owns the directory.
    abandoned = [rig.checkpoint_dir / f"checkpoint.tmp{uuid.uuid4().hex}", rig.checkpoint_dir / "ckpt-999_temp"]
    abandoned[0].touch()
    abandoned[1].mkdir()
    (abandoned[1] / "part-00000-of-00001.data-00000-of-00001.tempstate123").write_bytes(b"x" * 100)
    # The replacement refuses to share (when_owned: fail): it trains only if the lock and the group are free.
    second = rig.trainer(config, "second")
    _wait_training(rig, second)
    assert not [p for p in abandoned if p.exists()]
    assert second.stop() == 0, rig.logs()
    print(f"step error: exit {rc} {took:.1f} s after the fault: {error[:120]}...")


@pytest.mark.faults
def test_a_final_save_that_hangs_ends_the_process_after_the_limit_with_one_line_and_the_lock_released(
        rig: Rig) -> None:
    config = rig.write_config("trainer.yaml", rig.settings())
    limit_s = 3
    # A disk that stops answering during the final checkpoint (the only save of an idle run).
    trainer = _faulty(rig, config, "MainThread", "stream_trainer.state.checkpoint:CheckpointStore.save",
                      "--kind", "hang", cli=("--shutdown-limit-s", str(limit_s)))
    _wait_training(rig, trainer)
    trainer.proc.terminate()
    rc, output, took = _ended(rig, trainer, limit_s + 15)
    error = _one_error_line(output)
    assert error.startswith(f"{PREFIX}the shutdown did not finish within {limit_s} s (stuck in save at "
                            "checkpointer.py:"), error
    assert rc == EXIT_UNEXPECTED, f"exit status {rc}:\n{output[-3000:]}"
    assert lock_is_free(rig.checkpoint_dir)
    print(f"hung final save: exit {rc} {took:.1f} s after the hang began: {error}")
