"""The Kafka source of one worker: which partitions it reads, and the readers' supervisor.

Two readers behind one interface (``trainer.source.reader``, docs/operations.md):

* ``tensorflow-io``: a reader (``reader.py``) is a thread around a plain iterator over one
  partition's ``KafkaDataset``; ``supervisor.KafkaSource`` restarts, replaces and budgets them.
* ``confluent-kafka``: one consumer (``consumer.py``) reads every partition of the worker in one
  thread; ``consumer_source.ConsumerSource`` applies the same rules to it.

Either way the intake (``intake.py``) hands their messages fairly to the inbox (``inbox.py``), and
the ledger (``ledger.py``) is the one record of each partition's epoch and read position.
"""

from __future__ import annotations

from stream_trainer.ingest.consumer_source import ConsumerSource
from stream_trainer.ingest.reader import PartitionReader, tfio_config
from stream_trainer.ingest.supervisor import KafkaSource, assigned_partitions, staging_share
from stream_trainer.tfenv import CONFLUENT_KAFKA


def source_class(reader: str) -> type[KafkaSource]:
    """The source for ``trainer.source.reader`` as chosen (``SourceConfig.chosen_reader``)."""
    return ConsumerSource if reader == CONFLUENT_KAFKA else KafkaSource


__all__ = ["ConsumerSource", "KafkaSource", "PartitionReader", "assigned_partitions", "source_class",
           "staging_share", "tfio_config"]
