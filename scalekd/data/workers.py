"""Data worker processes leave stop signals to the trainer.

SIGTERM sent to a whole process group (`kill -- -PGID`, systemd, Slurm's preemption and time
limit) reaches the loader workers as well as the trainer. torch's workers die of it (their
handler exits on a SIGTERM not sent by their parent), SIGUSR1 kills any process that does not
handle it, and the trainer then fails with "DataLoader worker ... is killed by signal" instead of
checkpointing. So every worker ignores them: the trainer handles the signal
(scalekd.engine.stopping), checkpoints and shuts its workers down; a worker whose parent died
otherwise exits by itself (torch's workers and a broken process pool notice the parent's end).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

# the trainer's stop signals (scalekd.engine.stopping.SIGNALS), and Ctrl-C's, which reaches the
# terminal's whole foreground group: the trainer's KeyboardInterrupt ends the workers
LEFT_TO_THE_TRAINER = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def leave_signals_to_trainer(_worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn` (and process-pool initialiser): ignore the stop signals
    (and receive those that `signals_held` kept pending since the process started)."""
    for sig in LEFT_TO_THE_TRAINER:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_THE_TRAINER)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold the stop signals back while starting a worker: the child inherits the blocked mask,
    so a signal sent while it starts up (a spawned process imports for seconds before
    `leave_signals_to_trainer` runs) waits instead of killing it; this process receives its
    own held signals on leaving."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_THE_TRAINER)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
