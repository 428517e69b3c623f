"""Stopping a run cleanly on SIGINT, SIGTERM or SIGUSR1: the handler only raises a flag; the
training loop checks it after every step, and the ranks agree (one tiny all-reduce) so that
all of them save the same step's checkpoint and stop together, even when the signal reached
only some of them (a scheduler signalling one node, Ctrl-C on one terminal).

Under mpirun (Open MPI 4), SIGUSR1 is the clean way in: ``kill -USR1 <mpirun pid>`` is
forwarded to every rank while mpirun keeps the job and its output running. SIGINT/SIGTERM to
mpirun (Ctrl-C) are turned into SIGTERM to every rank followed by SIGKILL
``odls_base_sigkill_timeout`` seconds later (1 s by default; scripts/launch passes 60), and
mpirun stops relaying the ranks' output meanwhile: a rank that then writes to a full pipe
would block until killed. So once a signal has arrived, stdout and stderr become lossy
(non-blocking; what cannot be written is dropped) and nothing stands between the ranks and
their checkpoint. A second signal exits at once.
"""

import io
import os
import signal
import sys
import threading
from typing import Optional

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class _LossyStream(io.TextIOBase):
    """A text stream over a non-blocking fd that drops what the reader is not taking."""

    def __init__(self, stream):
        self._stream = stream
        self._fd = stream.fileno()
        try:
            os.set_blocking(self._fd, False)
        except OSError:
            pass

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        try:
            os.write(self._fd, data)
        except (BlockingIOError, BrokenPipeError, OSError):
            pass  # nobody is reading: the message is lost, the rank is not stuck
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return self._stream.isatty()


def _make_output_lossy() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _LossyStream):
            continue
        try:
            stream.flush()
        except (BlockingIOError, OSError):
            pass
        try:
            setattr(sys, name, _LossyStream(stream))
        except (AttributeError, io.UnsupportedOperation, ValueError):
            pass  # not a real file (captured by a test harness): leave it


class StopRequest:
    """Installs SIGINT/SIGTERM/SIGUSR1 handlers (main thread only) until :meth:`close`."""

    def __init__(self, rank: int, announce: bool = True):
        self.rank = rank
        self.announce = announce
        self.signal_name: Optional[str] = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        _make_output_lossy()
        if self.signal_name is not None:  # the second one: do not wait for the checkpoint
            print(f"[switchyard] rank {self.rank}: second {name}; exiting without a checkpoint",
                  file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.signal_name = name
        if self.announce:
            print(f"[switchyard] rank {self.rank}: {name} received; saving a checkpoint after the current step, "
                  "then stopping", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def agreed(self, world) -> bool:
        """True on every rank when any rank was signalled. Collective over ``world``."""
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int64)
        if world.size > 1:
            world.all_reduce(flag, "max")
        return bool(flag.item())

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
