"""pet-producer: replays labelled pet images into a Kafka topic in the stream-trainer wire format."""
