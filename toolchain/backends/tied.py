"""The manifest's word on a tied table, one shape for every backend.

A checkpoint whose lm_head is the embedding matrix ("tied") should ship that matrix once. Each
backend finds out from its own files whether it did (ExecuTorch: the buffers of weights.ptd;
LiteRT: the buffers of model.tflite; ONNX: weights.data offsets) and reports it here as the
lm_head entry's ``tied_to`` and ``storage``::

    storage: {table_stored: once | twice | unknown, shared_bytes: int, why: str}

``why`` is there whenever the table is not stored once: what keeps the two copies apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..schemes import Component

TIED_TO = Component.EMBEDDINGS.value


def different_encodings(schemes: tuple[str, str], known: Mapping[tuple[str, str], str] | None = None) -> str:
    """Why an (embeddings, lm_head) pair of schemes cannot share bytes: a backend's own reason
    for that pair, else that they are two encodings of the table."""
    return (known or {}).get(schemes) or (f"embeddings {schemes[0]} and lm_head {schemes[1]} are different "
                                          f"encodings of the table")


def storage(once: bool | None, shared_bytes: int = 0, why: str = "",
            schemes: tuple[str, str] | None = None,
            known: Mapping[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """The ``storage`` entry. once: True/False, or None when the backend could not tell (then
    `why` says what it looked for). Stored twice without a `why`: the schemes' (`different_encodings`)."""
    if once is None:
        return {"table_stored": "unknown", "why": why}
    out: dict[str, Any] = {"table_stored": "once" if once else "twice", "shared_bytes": shared_bytes}
    if not once:
        out["why"] = why or (different_encodings(schemes, known) if schemes else "not known")
    return out


def describe(entry: Mapping[str, Any]) -> str:
    """One line for `inspect`: ``tied to embeddings: table stored once (why)``."""
    st = entry["storage"]
    return f"tied to {entry.get('tied_to')}: table stored {st['table_stored']}" + (
        f" ({st['why']})" if st.get("why") else "")
