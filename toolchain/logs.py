"""Native runtimes' own log lines, kept off the terminal unless asked for.

ExecuTorch's C++ runtime writes lines such as
``[cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version``
straight to file descriptor 2 when it loads a program (five per command here); LiteRT
prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` the same way. They
are not for users, and Python's `sys.stderr` cannot catch them: C code writes to the
descriptor, not to the Python object. `native_logs()` points descriptor 2 at a
temporary file for the duration of a block (a program load), then puts it back:

- verbose off (the default): what was captured is dropped, unless the block raises,
  in which case it is replayed to stderr before the exception propagates, so a
  failing load still shows the runtime's own explanation;
- verbose on (`edgeseq --verbose`): nothing is redirected, the lines appear live.

Wrap loads, not every decode step: a redirect costs a few system calls, and the
runtimes here log at load only. Errors a runtime logs while executing stay visible.

Thread safety: redirects are serialised by one process-wide lock (re-entrant, so a
wrapped block may call another), so descriptor 2 is always restored to what it was.
While a block runs, anything *any* thread writes to descriptor 2 (Python's stderr
included) goes to the capture: keep blocks short.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

_verbose = False
_lock = threading.RLock()


def set_verbose(on: bool) -> None:
    """Let native runtimes' log lines through to stderr (True) or capture them (False)."""
    global _verbose
    _verbose = bool(on)


def is_verbose() -> bool:
    return _verbose


def _flush() -> None:
    """Flush Python's stderr and C's stdio buffers (C's stderr is unbuffered by default, but a
    runtime may change that) so their text lands where descriptor 2 points now, before a swap."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextmanager
def native_logs(expected: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Capture what native code writes to file descriptor 2 inside the block (see the module doc).
    An exception of an `expected` type (e.g. InputError: a refusal that is its own one-line
    explanation) does not replay the capture; any other does."""
    if _verbose:
        yield
        return
    with _lock:
        _flush()  # text already written belongs before the capture
        capture, saved = _open_capture()
        if capture is None:  # no writable temp dir or no descriptor 2: better the lines than no load
            yield
            return
        failed = False
        try:
            os.dup2(capture.fileno(), 2)
            yield
        except BaseException as e:
            failed = not isinstance(e, expected)
            raise
        finally:
            _flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:  # the runtime's own lines explain the failure: show them
                capture.seek(0)
                _write_all(2, capture.read())
            capture.close()


def _open_capture() -> tuple[IO[bytes] | None, int]:
    """A temporary file to capture into and a duplicate of descriptor 2 to restore; (None, -1)
    if either cannot be had."""
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        return None, -1
    try:
        return capture, os.dup(2)
    except OSError:
        capture.close()
        return None, -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
