"""Session-side helpers every runtime's session shares: the manifest's declared encode inputs
-> the arrays to feed, and which encode program (full or a shorter one) runs them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError


def encode_arrays(entries: list[dict[str, Any]], inputs: tuple) -> list[np.ndarray]:
    """Session.encode's arguments -> one contiguous array per declared encode input, in order.

    `entries` is the manifest's programs.encode.inputs ({name, shape, dtype}); `inputs` the
    positional arrays, or a single dict keyed by name. Each array is cast to the declared
    dtype; a missing input or a wrong shape is a one-line InputError."""
    if len(inputs) == 1 and isinstance(inputs[0], dict):
        given = inputs[0]
        missing = [e["name"] for e in entries if e["name"] not in given]
        if missing:
            raise InputError(f"encode needs {', '.join(e['name'] for e in entries)}; missing {', '.join(missing)}")
        inputs = tuple(given[e["name"]] for e in entries)
    if len(inputs) != len(entries):
        raise InputError(f"encode takes {len(entries)} inputs ({', '.join(e['name'] for e in entries)}), "
                         f"got {len(inputs)}")
    out = []
    for e, x in zip(entries, inputs, strict=True):
        a = np.ascontiguousarray(x, dtype=np.dtype(e["dtype"]))
        if list(a.shape) != list(e["shape"]):
            raise InputError(f"encode input {e['name']} must have shape {list(e['shape'])}, got {list(a.shape)}")
        out.append(a)
    return out


def choose_encode(entries: list[dict[str, Any]], inputs: tuple, full: Any, shorter: dict[int, Any]):
    """Session.encode's arguments -> (program, length, arrays): the declared encode arrays
    (`encode_arrays`) and the program to run them. With shorter encode programs (recipe
    encode_lengths; `shorter` maps length -> program) that is the shortest that holds this
    text input, run on arrays[:, :length]; else `full` on the arrays as given. Text inputs
    are right-padded [1, S]: the real input ends at attention_mask's last 1."""
    arrays = encode_arrays(entries, inputs)
    if shorter:
        mask = arrays[[e["name"] for e in entries].index("attention_mask")][0]
        used = int(np.flatnonzero(mask)[-1]) + 1 if mask.any() else 1
        n = next((n for n in sorted(shorter) if used <= n), None)
        if n is not None:
            return shorter[n], n, [np.ascontiguousarray(a[:, :n]) for a in arrays]
    return full, arrays[0].shape[1], arrays
