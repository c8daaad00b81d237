"""The `CacheStore` interface every cell cache implements, and what an entry is made of."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ..errors import InputError

RESULTS = "cell.json"  # verify + probe results of the cell, next to artifact/


class CacheStore(ABC):
    """A content-addressed store of cell entries (see the package docstring for the guarantees).

    `get` and `put` work on a local **entry dir** (`artifact/` + `cell.json`): `get` makes an
    intact entry readable locally (in place for a directory store, downloaded into `scratch` for
    an object store), `put` publishes a staged one and returns where it is readable now.
    """

    url: str

    @abstractmethod
    def check(self) -> None:
        """Refuse (InputError, one line) a store that cannot be reached, read or written."""

    def claim(self, key: str) -> AbstractContextManager[object]:
        """Held while a cell is looked up and built: a store that can lock across its builders
        does (the directory store, with flock); one that cannot relies on `put` alone."""
        return nullcontext()

    @abstractmethod
    def get(self, key: str, scratch: Path) -> Path | None:
        """The entry dir of `key` if present and intact, else None (a corrupt entry is dropped)."""

    @abstractmethod
    def put(self, key: str, staged: Path) -> Path:
        """Publish the entry dir `staged` under `key` atomically; if an intact entry appeared
        meanwhile (another builder), keep that one. Returns a local entry dir to read from."""

    def describe(self) -> str:
        return self.url


def entry_files(entry: Path) -> list[str]:
    """Every file of an entry dir, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file())


def read_results(entry: Path) -> dict[str, Any] | None:
    """The entry's results if its artifact is intact (every file matches the artifact manifest's
    sha256 and size) and its cell.json is readable, else None."""
    from ..artifact import open_artifact

    cell = entry / RESULTS
    if not cell.is_file():
        return None
    try:
        open_artifact(entry / "artifact")
        data = json.loads(cell.read_text())
    except (InputError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None
