"""Progress of long work (export stages, verify rows, build cells) on stderr.

Exports take minutes and verify of 400 rows more; a tool that says nothing for that long
looks hung. Three modes, chosen once by the CLI (`configure`):

  * live:  a terminal gets one status line, rewritten in place with the elapsed time
           (a heartbeat thread ticks it every second while a long stage runs);
  * lines: anything else (CI logs, pipes) gets plain lines, `[  12.3s] export: lowering`,
           one when a stage starts and one when it ends, and during a long stage one
           every HEARTBEAT_S seconds so a log shows the work is alive;
  * off:   `--quiet`, and the default for library callers (`import edgeseq`).

Every line starts with `[<elapsed>s] ` (PREFIX_RE) so tools reading stderr can tell progress
from the one `error: ...` line a failure prints.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import TextIO

from . import interrupts


class Mode(Enum):
    OFF = "off"
    LINES = "lines"
    LIVE = "live"


HEARTBEAT_S = 30.0  # lines mode: a "still ..." line this often during one long stage
PREFIX_RE = re.compile(r"^\[\s*\d+\.\ds\] ")


class _State:
    mode: Mode = Mode.OFF
    stream: TextIO | None = None
    t0: float = time.monotonic()
    lock = threading.Lock()
    live_len = 0  # characters of the live line currently shown
    depth = 0  # nested stages: only the innermost one ticks


def configure(quiet: bool = False, stream: TextIO | None = None) -> Mode:
    """Called by the CLI: live on a terminal, lines otherwise, off with --quiet."""
    out = stream if stream is not None else sys.stderr
    _State.t0 = time.monotonic()
    if quiet:
        _State.mode = Mode.OFF
    else:
        _State.mode = Mode.LIVE if getattr(out, "isatty", lambda: False)() else Mode.LINES
        out = _own_descriptor(out)
    _State.stream = out
    return _State.mode


def _own_descriptor(out: TextIO) -> TextIO:
    """Progress written to the process's real stderr goes through a duplicate of descriptor 2,
    so it still reaches the terminal while logs.native_logs() points descriptor 2 at a capture
    (an export's converters log natively for minutes; their lines are hidden, ours are not)."""
    try:
        if out.fileno() != 2:
            return out
        return os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, ValueError, OSError):  # not a real file (a test's StringIO)
        return out


def mode() -> Mode:
    return _State.mode


def _elapsed() -> str:
    return f"[{time.monotonic() - _State.t0:6.1f}s] "


def _write(text: str, final: bool) -> None:
    """One progress message: a line (lines mode, or a finished live line) or the live line."""
    stream = _State.stream or sys.stderr
    with _State.lock:
        try:
            if _State.mode is Mode.LIVE:
                pad = " " * max(0, _State.live_len - len(text))
                stream.write("\r" + text + pad + ("\n" if final else ""))
                _State.live_len = 0 if final else len(text)
            else:
                stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail the work
            pass


def clear() -> None:
    """Erase a live line before something else (an error, the command's output) is printed."""
    if _State.mode is not Mode.LIVE or not _State.live_len:
        return
    stream = _State.stream or sys.stderr
    with _State.lock:
        try:
            stream.write("\r" + " " * _State.live_len + "\r")
            stream.flush()
        except (OSError, ValueError):
            pass
        _State.live_len = 0


def note(message: str) -> None:
    """A one-off progress line (shown in lines and live mode)."""
    if _State.mode is not Mode.OFF:
        _write(_elapsed() + message, final=True)


@contextmanager
def stage(what: str) -> Iterator[None]:
    """A named step: `what ...` when it starts, `what: done in 12.3 s` when it ends; in between
    a ticking live line, or a `still ...` line every HEARTBEAT_S in lines mode. A Ctrl-C
    received before either end stops here, even if something swallowed it (interrupts.py)."""
    interrupts.check()
    if _State.mode is Mode.OFF:
        yield
        interrupts.check()
        return
    start = time.monotonic()
    done = threading.Event()
    _State.depth += 1
    level = _State.depth
    if _State.mode is Mode.LIVE:
        _write(_elapsed() + what + " ...", final=False)
    else:
        _write(_elapsed() + what + " ...", final=True)

    def tick() -> None:
        period = 1.0 if _State.mode is Mode.LIVE else HEARTBEAT_S
        while not done.wait(period):
            if _State.depth != level:  # an inner stage is running and reports itself
                continue
            msg = f"{what} ... {time.monotonic() - start:.0f} s"
            if _State.mode is Mode.LIVE:
                _write(_elapsed() + msg, final=False)
            else:
                _write(_elapsed() + "still " + msg, final=True)

    thread = threading.Thread(target=tick, name="edgeseq-progress", daemon=True)
    thread.start()
    ok = False
    try:
        yield
        interrupts.check()
        ok = True
    finally:
        done.set()
        thread.join()
        _State.depth -= 1
        took = time.monotonic() - start
        if ok:
            _write(_elapsed() + f"{what}: done in {took:.1f} s", final=True)
        else:
            clear()


class Counter:
    """Rows of a long loop (verify's eval rows): `what 37/400` live, and in lines mode a line at
    every 10% (and the last row) so a CI log shows the rate without one line per row."""

    def __init__(self, what: str, total: int = 0):
        self.what, self.total = what, total
        self._first: tuple[float, int] | None = None  # (time, rows) at the first report: the rate's origin
        self._shown = -1

    def __call__(self, done: int, total: int | None = None) -> None:
        if _State.mode is Mode.OFF:
            return
        total = total or self.total
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        t0, d0 = self._first
        took = now - t0
        eta = f", ~{took / (done - d0) * (total - done):.0f} s left" if d0 < done < total and took > 0 else ""
        msg = f"{self.what} {done}/{total} ({took:.0f} s{eta})"
        if _State.mode is Mode.LIVE:
            _write(_elapsed() + msg, final=done >= total)
            return
        tenth = done * 10 // max(total, 1)
        if tenth > self._shown or done >= total:
            self._shown = tenth
            _write(_elapsed() + msg, final=True)
