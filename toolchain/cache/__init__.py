"""Where `edgeseq build` keeps its cells: a content-addressed store behind one small interface.

A cell's key is a sha256 over its inputs (see `toolchain.build.cell_key`); an **entry** is what
building the cell produced: `artifact/` (the artifact folder) and `cell.json` (its verify and
probe results). Every store gives the same guarantees:

- an entry is published atomically: a reader sees all of it or none of it;
- an entry is served only after the files it lists hash to the sha256 it lists (and the artifact's
  own manifest checks out); a corrupt entry is dropped and the cell rebuilt;
- two builders of the same cell at once end with one intact entry.

`LocalStore` (a directory; a flock per entry and a rename) and `S3Store` (an S3-compatible object
store; files under a unique temporary prefix, then a conditional write of the entry's manifest)
implement it. `open_store(url)` picks one by URL and checks that it is usable before anything
is written.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import RESULTS, CacheStore, entry_files, read_results

__all__ = ["RESULTS", "CacheStore", "default_cache", "entry_files", "open_store", "read_results"]


def default_cache() -> str:
    return str(Path.home() / ".cache" / "edgeseq" / "build")


def open_store(url: str | None, check: bool = True) -> CacheStore:
    """The store for `url`: a local path (or file://PATH), or s3://BUCKET[/PREFIX]. With `check`,
    refuse in one line (InputError) a malformed URL, an unreachable store or bad credentials."""
    from .local import LocalStore

    url = url or default_cache()
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme == "s3":
            from .s3 import S3Store

            store: CacheStore = S3Store.from_url(url)
        elif scheme == "file":
            store = LocalStore(Path(url.split("://", 1)[1]))
        else:
            raise InputError(f"--cache {url}: unknown scheme {scheme!r} (a local path, file://PATH or "
                             "s3://BUCKET/PREFIX)")
    else:
        store = LocalStore(Path(url))
    if check:
        store.check()
    return store
