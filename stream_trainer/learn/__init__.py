"""What the model learns from and how: batches of fresh and replayed rows, the test-then-train
step, the model and its precision, and the workers (one, or several on MultiWorkerMirroredStrategy)."""
