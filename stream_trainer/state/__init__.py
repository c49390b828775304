"""What the trainer has done, kept so that a restart neither skips nor repeats more than it must.

Four words for four offsets of one partition, used with these meanings everywhere:

- **read position**: the next offset a reader will hand to the inbox (``ingest/``). It runs
  ahead of everything below; nothing is decided from it except where a restarted reader resumes.
- **trained position**: the first offset whose message is neither in the model's weights nor
  dead-lettered (``progress.OffsetTracker``). It moves only over an unbroken chain of handled
  messages, so it never passes a message still in flight.
- **saved position**: the trained position captured in a checkpoint together with the weights
  that reflect it (``checkpoint.py``). A restart resumes here: a hard kill skips nothing, and
  re-trains at most the work done after the last checkpoint.
- **committed offset**: the saved position, committed to the consumer group after the save
  succeeded (``committer.py``), for lag dashboards and for a trainer that starts without a
  checkpoint. It never runs ahead of a saved position.

So: read >= trained >= saved >= committed, at every moment, on every partition.
"""
