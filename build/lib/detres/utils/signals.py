"""Stop signals (preemption): SLURM and Kubernetes send SIGTERM before they kill a job, SLURM
``--signal=USR1@90`` sends SIGUSR1 ahead of the time limit, torchrun forwards what it
handles (``--signals-to-handle``) to its workers.

:class:`StopSignals` turns such a signal into a flag instead of death: the training loop reads
the flag at the next step boundary, every rank agrees (``dist.flagged_ranks``), rank 0 writes
a checkpoint, and the run exits with :data:`detres.engine.launch.EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from detres.utils.errors import InputError


def parse_signals(names: list[str] | tuple[str, ...]) -> list[signal.Signals]:
    """``["SIGTERM", "USR1"]`` -> signals; an unknown name is an error naming it."""
    out = []
    for name in names:
        key = name.strip().upper()
        key = key if key.startswith("SIG") else "SIG" + key
        sig = getattr(signal, key, None)
        if not isinstance(sig, signal.Signals) or key in ("SIGKILL", "SIGSTOP"):
            raise InputError(f"train.stop_signals: {name!r} is not a signal that can be "
                             "caught (e.g. SIGTERM, SIGUSR1)")
        out.append(sig)
    return out


class StopSignals:
    """Within ``with StopSignals([...]) as s:``, the given signals set ``s.received`` (the
    first one's name) instead of ending the process; the previous handlers come back on
    exit. Outside the main thread (where Python cannot install handlers) it does nothing.

    Installed before a DataLoader forks its workers, the workers inherit the flag-setting
    handler too, so a signal sent to a whole process tree (``scancel --signal``, a container
    runtime) does not kill a worker under the main process's feet."""

    def __init__(self, signals: list[signal.Signals]) -> None:
        self.signals = list(signals)
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def keep(self) -> None:
        """Ignore these signals from now on, past the ``with`` block: for a worker that is
        ending with its own exit code, so that a launcher's SIGTERM to the remaining workers
        (torchrun's, once one worker has exited) does not replace that code. ``SIG_IGN``
        rather than a Python handler, which the interpreter resets while it shuts down."""
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
