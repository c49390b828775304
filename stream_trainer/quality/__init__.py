"""What is wrong with a message (dead letters, with the pipeline's own decoder as the judge) and
how good the model is (evaluation on the held-out eval topic)."""
