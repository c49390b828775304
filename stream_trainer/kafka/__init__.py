"""The only package that talks to brokers through confluent-kafka: metadata, topics, offsets,
commits, watermarks, the dead-letter producer and re-reads (``cluster``)."""

from stream_trainer.kafka.cluster import RDKAFKA_LOG, Cluster, Watermarks, client_config

__all__ = ["RDKAFKA_LOG", "Cluster", "Watermarks", "client_config"]
