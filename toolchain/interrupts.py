"""Ctrl-C and SIGTERM that cannot be lost between the signal and the artifact's commit.

Python turns SIGINT into a KeyboardInterrupt raised wherever the main thread happens to be.
Where that is a finalizer (``__del__``, a weakref callback: Python prints "Exception ignored"
and carries on) or library code that catches everything, the exception is gone and an
export runs on to the end as if nothing had happened (seen once in CI: SIGINT sent during
lowering, exit 0 and a finished artifact). So the CLI's handlers also *record* the signal
(``install``), and the places that must not go on after one ask (``check``): every
``progress.stage`` boundary, and ``artifact.staging_dir`` right before it renames the staged
artifact into place. A swallowed interrupt then still ends the command with nothing written.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_received: list[int] = []  # signal numbers received since install(), oldest first


def _exit_for(signum: int) -> BaseException:
    """What the signal unwinds with: Ctrl-C as KeyboardInterrupt (the CLI prints one line and
    exits 130), SIGTERM as SystemExit(128 + 15)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise _exit_for(signum)


def install() -> None:
    """Record-and-raise handlers for SIGINT (where Python's own is in place) and SIGTERM (where
    the default is), in the main thread only; the previous ones come back with ``uninstall``."""
    if threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _handler)


def uninstall() -> None:
    """Put the default handlers back and forget what was received: the command that saw the
    signal has ended, and a later one in the same process (a notebook, a test) starts clean."""
    if threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    if signal.getsignal(signal.SIGINT) is _handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is _handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check() -> None:
    """Raise again for a signal received since install() (whether or not its first exception
    got through): call before anything that must not happen after Ctrl-C."""
    if _received:
        raise _exit_for(_received[0])
