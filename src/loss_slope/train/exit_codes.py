"""Exit codes of one run's trainer (``python -m loss_slope.train``), read by the pack launcher.

``EXIT_OK`` the run is complete (or was already); ``EXIT_ERROR`` it failed; ``EXIT_UNFINISHED``
it stopped for its time budget with its latest checkpoint saved (a rerun resumes, and the pack
retries it without spending an error retry); ``EXIT_LOCKED`` another live trainer holds the run's
lock (nothing was touched); ``EXIT_NO_GPU`` a GPU was allocated or asked for and CUDA is not
available. :func:`killed_by` names what ended a process killed by a signal (a negative return code).
"""

import signal

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNFINISHED = 3
EXIT_LOCKED = 4
EXIT_NO_GPU = 5

__all__ = ["EXIT_OK", "EXIT_ERROR", "EXIT_UNFINISHED", "EXIT_LOCKED", "EXIT_NO_GPU", "killed_by"]


def killed_by(code: int) -> str:
    """What ended a process with return code ``code`` < 0 (signal ``-code``): its log's last line
    says nothing about it. Used for trainers (the pack launcher) and probe workers alike."""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    why = " (sent by the host's out-of-memory killer, or at a hard time limit)" if code == -signal.SIGKILL else ""
    return f"killed by {name}{why}"
