"""edgeseq: split encoder-decoder transformers into on-device encode/decode programs."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A short hash of this package's own source and data files. The version number alone
    does not change when the exporters do, so caches of exported artifacts (build's cell
    cache, the benchmarks') key on this as well: an edit to a lowering is a new key."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".json") and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]
