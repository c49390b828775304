"""The supervisor's rules (``supervisor.py``) applied to the confluent-kafka reader's one consumer.

What differs from a tensorflow-io reader per partition, and why:

* **A failed partition** is unassigned by the consumer's thread, which reads the others on; its
  restart (the backoff, then ``resolve`` from the ledger's read position, as for tensorflow-io)
  runs in a short thread of its own, so that one partition's wait holds up no other, and ends
  by assigning the partition again at the resolved offset.
* **A stalled partition** is retired and a new handle installed, like a replaced reader, and
  the consumer is re-created: whatever state wedged librdkafka goes with it, and every other
  partition continues where it stopped. If the consumer's thread itself has not come round for
  ``stall_timeout_s`` (stuck in C++), the source gives up instead, as it does for a tensorflow-io
  reader still blocked when its successor stalls.
* **A failure of the whole consumer** (fatal, or an exception from ``consume``) counts once, for
  every partition together, and re-creates the consumer after the backoff.
"""

from __future__ import annotations

from collections.abc import Mapping

from stream_trainer.ingest.consumer import AssignedPartition, SharedConsumer
from stream_trainer.ingest.supervisor import KafkaSource


class ConsumerSource(KafkaSource):
    """Every assigned partition through one ``SharedConsumer``, supervised by ``KafkaSource``'s rules."""

    def start(self, starts: Mapping[int, int], stops: Mapping[int, int] | None = None) -> KafkaSource:
        self.consumer = SharedConsumer(
            self.kafka, self.topic, self.group_id, self.cfg.poll_timeout_ms, self.intake, self.stop,
            on_partition_failed=self._partition_failed, on_consumer_failed=self._consumer_failed,
            on_done=lambda _p: self._bounded_done())
        super().start(starts, stops)
        self.threads.start("kafka-consumer", self.consumer.run)
        return self

    def _launch(self, partition: int, start: int, stop_at: int | None, notify: bool) -> None:
        handle = AssignedPartition(self.topic, partition, self.intake)
        epoch = self._install(handle, start, notify)
        assert epoch is not None  # a new reader is always installed
        self.readers[partition] = handle
        self.consumer.assign(handle, start, epoch, stop_at)

    def _still_blocked(self, partition: int) -> str:
        stuck = self.consumer.stuck_s()
        if stuck > self.cfg.stall_timeout_s:
            return f"the worker's Kafka consumer has been blocked in confluent-kafka for {stuck:.0f} s"
        return ""

    def _relaunch(self, partition: int, start: int) -> None:
        self._launch(partition, start, None, notify=True)
        self.consumer.recreate()

    def _partition_failed(self, handle: AssignedPartition, stop_at: int | None, reason: str) -> None:
        """Called by the consumer's thread: restart the partition from its own short thread."""
        self.threads.start(f"kafka-restart-{handle.partition}", lambda: self._restart(handle, stop_at, reason))

    def _restart(self, handle: AssignedPartition, stop_at: int | None, reason: str) -> None:
        if handle.retired:  # replaced by the watchdog meanwhile: its successor reads on
            return
        start = self._after_failure(handle.partition, reason)
        if start is None:
            return
        epoch = self._install(handle, start, notify=True, resuming=True)
        if epoch is not None:  # None: replaced by the watchdog while it waited to restart
            self.consumer.assign(handle, start, epoch, stop_at)

    def _consumer_failed(self, reason: str) -> bool:
        """Called by the consumer's thread: count one failure and wait the backoff; False to give up."""
        if self._count_failure(None, reason):
            return False
        return not self.stop.wait(self.backoff_s)
