"""One round of training told as a story (``train_loop.py``) of parts that each own one thing: the
ballot (the vote), the accountant (positions), the schedule (one clock), the scorer and the status line."""
