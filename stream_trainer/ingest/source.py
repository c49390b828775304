"""The Kafka source of one worker: which partitions it reads, and the readers' supervisor.

A reader (``reader.py``) is a thread around a plain iterator over one partition's tensorflow-io
``KafkaDataset``; the supervisor (``supervisor.py``) restarts, replaces and budgets them; the
intake (``intake.py``) hands their messages fairly to the inbox (``inbox.py``), and the ledger
(``ledger.py``) is the one record of each partition's epoch and read position.
"""

from __future__ import annotations

from stream_trainer.ingest.reader import PartitionReader, tfio_config
from stream_trainer.ingest.supervisor import KafkaSource, assigned_partitions, staging_share

__all__ = ["KafkaSource", "PartitionReader", "assigned_partitions", "staging_share", "tfio_config"]
