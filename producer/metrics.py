"""Every Prometheus metric pet-producer exports, defined once.

Same conventions as the trainer's: base units, ``_total`` counters, bounded labels (topic and
the fixed skip reasons, never image ids).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Histogram, start_http_server

from producer.sources import MISSING_TRIMAP, OVERSIZE, UNREADABLE

# Produce call -> delivery report: linger plus a broker round trip, normally milliseconds; the tail
# shows back-pressure and broker outages (librdkafka retries for up to message.timeout.ms).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

MESSAGES_SENT = Counter(
    "pet_producer_messages_sent_total", "Messages the broker acknowledged (acks=all).", ["topic"])
BYTES_SENT = Counter(
    "pet_producer_bytes_sent_total", "Bytes of acknowledged message values.", ["topic"])
SEND_ERRORS = Counter(
    "pet_producer_send_errors_total", "Messages whose delivery failed for good (after librdkafka's retries).",
    ["topic"])
SKIPPED = Counter(
    "pet_producer_skipped_total", "Images not sent: missing_trimap, unreadable or oversize.", ["reason"])
DELIVERY_LATENCY = Histogram(
    "pet_producer_delivery_latency_seconds", "From the produce call to its delivery report.",
    buckets=_LATENCY_BUCKETS)


SKIP_REASONS = (MISSING_TRIMAP, UNREADABLE, OVERSIZE)
for _reason in SKIP_REASONS:  # export zeros from the start, so rate() and alerts see the series
    SKIPPED.labels(reason=_reason)


def declare_topics(*topics: str) -> None:
    """Export zero-valued per-topic series for the topics this run writes."""
    for topic in topics:
        MESSAGES_SENT.labels(topic=topic)
        BYTES_SENT.labels(topic=topic)
        SEND_ERRORS.labels(topic=topic)


def serve(host: str, port: int) -> Callable[[], None]:
    """Start the /metrics endpoint (port 0 disables it); return a function that stops it.

    Raises OSError if the port is taken.
    """
    if not port:
        return lambda: None
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
