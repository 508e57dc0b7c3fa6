"""Exit codes of one run's trainer (``python -m loss_slope.train``), read by the pack launcher.

``EXIT_OK`` the run is complete (or was already); ``EXIT_ERROR`` it failed; ``EXIT_UNFINISHED``
it stopped for its time budget with its latest checkpoint saved (a rerun resumes, and the pack
retries it without spending an error retry); ``EXIT_LOCKED`` another live trainer holds the run's
lock (nothing was touched); ``EXIT_NO_GPU`` a GPU was allocated or asked for and CUDA is not
available.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNFINISHED = 3
EXIT_LOCKED = 4
EXIT_NO_GPU = 5

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_UNFINISHED", "EXIT_LOCKED", "EXIT_NO_GPU"]
