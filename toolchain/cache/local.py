"""A cell cache in a local (or shared, flock-capable) directory: `<root>/<key>/{artifact/, cell.json}`.

A `<key>.lock` file (flock) serializes builders of one cell across processes of this machine;
an entry is staged next to its final name and renamed into place, so it appears complete or not
at all."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from .base import CacheStore, read_results


class LocalStore(CacheStore):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = str(self.root)

    def check(self) -> None:
        """The directory, or its nearest existing parent, must be a writable directory (nothing is
        created here: a bad --scheduler or --shard found later must leave nothing behind)."""
        p = self.root
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            raise InputError(f"--cache {self.root}: {p} is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"--cache {self.root}: {p} is not writable")

    @contextmanager
    def claim(self, key: str) -> Iterator[object]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get(self, key: str, scratch: Path) -> Path | None:
        entry = self.root / key
        return entry if read_results(entry) is not None else None

    def put(self, key: str, staged: Path) -> Path:
        """Move the staged entry next to its final name (a copy when it is on another filesystem),
        then rename it into place; a corrupt entry it replaces is removed first (we hold the lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = self.root / key
        tmp = self.root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.move(str(staged), str(tmp))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry
