"""Every Prometheus metric the trainer exports, defined once.

Conventions: base units (seconds, bytes), ``_total`` counters, ``_seconds`` histograms.
Labels are bounded: topic, partition and a fixed set of dead-letter reasons; never offsets or ids.
The default registry also carries ``process_*`` (CPU, memory) and ``python_*`` collectors.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Step times on 2 CPU cores run from ~50 ms (tiny test models) to seconds (wide U-Nets).
_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Input wait is ~0 when the pipeline keeps up; the tail shows stalls and broker outages.
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
# Produce->trained latency: shuffle window + queueing, normally well under a few seconds.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

MESSAGES_CONSUMED = Counter(
    "stream_trainer_messages_consumed_total", "Messages read from Kafka and handled (trained or dead-lettered).",
    ["topic"])
BYTES_CONSUMED = Counter(
    "stream_trainer_bytes_consumed_total", "Bytes of message values trained on.", ["topic"])
IMAGES_TRAINED = Counter(
    "stream_trainer_images_trained_total", "Images that went through a training step.")
STEPS = Counter("stream_trainer_steps_total", "Training steps run.")
DEAD_LETTERED = Counter(
    "stream_trainer_dead_letter_messages_total", "Malformed messages sent to the dead-letter topic.",
    ["reason"])
CHECKPOINTS = Counter("stream_trainer_checkpoints_total", "Checkpoints written (weights, optimizer, offsets).")
CHECKPOINT_FAILURES = Counter(
    "stream_trainer_checkpoint_failures_total", "Checkpoint saves that failed; offsets were not committed.")
COMMIT_FAILURES = Counter(
    "stream_trainer_commit_failures_total", "Consumer-group offset commits that failed after a checkpoint.")
STEP_SECONDS = Histogram(
    "stream_trainer_step_duration_seconds", "Wall time of one training step.", buckets=_STEP_BUCKETS)
INPUT_WAIT_SECONDS = Histogram(
    "stream_trainer_input_wait_seconds", "Time the loop waited for the next batch before a step.",
    buckets=_WAIT_BUCKETS)
LATENCY_SECONDS = Histogram(
    "stream_trainer_produce_to_train_latency_seconds", "From a message's produce timestamp to its training step.",
    buckets=_LATENCY_BUCKETS)
LOSS = Gauge("stream_trainer_loss", "Training loss of the latest step.")
EVAL_MEAN_IOU = Gauge("stream_trainer_eval_mean_iou", "Mean IoU over the 3 trimap classes on the eval set.")
EVAL_PIXEL_ACCURACY = Gauge("stream_trainer_eval_pixel_accuracy", "Pixel accuracy on the eval set.")
CONSUMER_LAG = Gauge(
    "stream_trainer_consumer_lag_messages", "Messages in the partition after the trainer's position.",
    ["topic", "partition"])
LAST_CHECKPOINT = Gauge(
    "stream_trainer_last_checkpoint_timestamp_seconds", "Unix time of the last successful checkpoint.")
GLOBAL_STEP = Gauge("stream_trainer_global_step", "Training step, continued across restarts from the checkpoint.")


def serve(host: str, port: int) -> None:
    """Start the /metrics endpoint (port 0 disables it); raise OSError if the port is taken."""
    if port:
        start_http_server(port, addr=host)
