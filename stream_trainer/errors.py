"""The project's exceptions: each message says what happened and what to do about it."""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` whole, on one line: line breaks and runs of blanks become single spaces. Errors from
    TensorFlow and librdkafka span several lines (node names, hints); cutting them to the first
    one leaves "Graph execution error:", so no message is ever cut."""
    return " ".join(str(text).split())


class StreamTrainerError(Exception):
    """Base class for errors the CLI prints as one line before exiting non-zero."""


class ConfigError(StreamTrainerError):
    """A configuration file or flag is invalid; the message names the offending key."""


class MissingToolError(StreamTrainerError):
    """A program the local broker needs (java, mvn) is not installed."""


class BrokerStartError(StreamTrainerError):
    """The local Kafka broker could not be resolved, formatted or started."""


class BrokerUnavailableError(StreamTrainerError):
    """No Kafka broker answered at the configured bootstrap address in time."""


class AuthenticationError(BrokerUnavailableError):
    """The cluster answers but the two sides do not trust each other: SASL credentials refused, a
    broker certificate that is untrusted or names another host, or a security protocol that does
    not match the listener. Retrying does not help; the configuration or the cluster must change."""


class AuthorizationError(BrokerUnavailableError):
    """The cluster knows who we are, but an ACL forbids what we asked for."""


class CheckpointError(StreamTrainerError):
    """A checkpoint could not be written or read."""


class InputPipelineError(StreamTrainerError):
    """The tf.data input pipeline could not be built or run (not a passing broker outage)."""


class PeerLostError(StreamTrainerError):
    """A worker of a multi-worker job died or stopped answering; the whole job must restart."""


class OffsetResetError(StreamTrainerError):
    """A saved position lies beyond a partition's log end and trainer.source.on_offset_reset is fail."""


class OwnershipError(StreamTrainerError):
    """Another trainer owns the checkpoint directory or the consumer group (when_owned: fail)."""


class ThreadDiedError(StreamTrainerError):
    """A long-lived background thread ended with an unexpected exception; the trainer stops rather
    than run on without the work that thread did (commits, dead letters, a partition's reader)."""
