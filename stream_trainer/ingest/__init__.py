"""Reading and decoding one worker's partitions: Kafka messages in, decoded fresh rows out.

reader (one thread per partition) -> intake (a bounded share per partition, in turn) -> inbox ->
pipeline (the one decoder, every core) -> feeder -> fresh rows. The supervisor restarts and
replaces readers; the ledger is the one record of each partition's epoch and read position.
"""
