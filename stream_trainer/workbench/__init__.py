"""The workbench around the daemon: a local Kafka broker, the demo, the benchmarks and the soak.

Nothing in the training daemon imports from here; these are the tools that start brokers,
producers and trainers to show, measure and stress them (``stream-trainer broker|demo|bench|soak``).
"""
