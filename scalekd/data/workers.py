"""Data worker processes leave stop signals to the trainer.

SIGTERM sent to a whole process group (`kill -- -PGID`, systemd, Slurm's preemption and time
limit) reaches the loader workers as well as the trainer. torch's workers die of it (their
handler exits on a SIGTERM not sent by their parent), SIGUSR1 kills any process that does not
handle it, and the trainer then fails with "DataLoader worker ... is killed by signal" instead of
checkpointing. So every worker ignores them, except a SIGTERM from its own parent: that is how
torch and multiprocessing end workers that do not stop by themselves (at the interpreter's exit
they terminate and then join them: a worker deaf to it would hang the trainer's exit). The
trainer handles the signal (scalekd.engine.stopping), checkpoints and ends its workers.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# the trainer's stop signals (scalekd.engine.stopping.SIGNALS), and Ctrl-C's, which reaches the
# terminal's whole foreground group: the trainer's KeyboardInterrupt ends the workers
LEFT_TO_THE_TRAINER = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def leave_signals_to_trainer(_worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn` (and process-pool initialiser), run in the worker: ignore
    the stop signals but a SIGTERM from the parent (received by a thread of its own)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # inherited by later threads
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-parent").start()
    for sig in (signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    # those that `signals_held` kept pending since the process started are now ignored
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1, signal.SIGINT])


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo([signal.SIGTERM]).si_pid == parent:
            os._exit(0)  # as torch's own handler does for its parent's SIGTERM


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
