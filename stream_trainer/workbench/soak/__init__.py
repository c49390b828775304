"""``stream-trainer soak``: long runs of producer and trainer.

``memory`` is the plain soak (``make soak``): is the trainer's RSS flat over half an hour?
``chaos`` is the chaos soak (``make soak-chaos``, ``--chaos``): an hour of faults every 30-60 s;
are resources flat, is nothing skipped, are duplicates bounded, is only poison dead-lettered?
"""

from stream_trainer.workbench.soak.memory import (
    MAX_SLOPE_MIB_PER_HOUR,
    MIN_STEADY_S,
    Sample,
    main,
    shortest_judged_minutes,
    slope_mib_per_hour,
    verdict,
)

__all__ = ["MAX_SLOPE_MIB_PER_HOUR", "MIN_STEADY_S", "Sample", "main", "shortest_judged_minutes",
           "slope_mib_per_hour", "verdict"]
