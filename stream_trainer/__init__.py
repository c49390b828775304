"""stream-trainer: train a Keras segmentation model continuously from images streamed through Kafka."""

__version__ = "0.1.0"
