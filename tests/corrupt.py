"""Ways to break an input, for tests/test_bad_input.py (which lists what edgeseq promises).

File corruptors (checkpoints, artifacts), hypothesis strategies for fuzzing YAML specs, a
fake runtime Session that records decode positions, and injected OS faults.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from toolchain.backends.base import Session

# --- files ---------------------------------------------------------------------------------


def edit_json(f: Path, **changes) -> None:
    """Set keys of a JSON object file; a value of None deletes the key."""
    data = json.loads(f.read_text())
    for k, v in changes.items():
        data.pop(k) if v is None else data.__setitem__(k, v)
    f.write_text(json.dumps(data))


def truncate(f: Path, keep: float = 0.5) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


def flip_a_bit(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def to_pickle(ck: Path) -> None:
    """Replace model.safetensors by the same tensors as a pickle pytorch_model.bin."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(ck / "model.safetensors"), ck / "pytorch_model.bin")
    (ck / "model.safetensors").unlink()


def bigger_tokenizer(ck: Path) -> None:
    """Add tokens whose ids are past the model's vocabulary (a tokenizer from another model)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ck / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(8)])
    tok.save(str(ck / "tokenizer.json"))


def edit_manifest(a: Path, change) -> None:
    m = json.loads((a / "manifest.json").read_text())
    change(m)
    (a / "manifest.json").write_text(json.dumps(m))


def unlisted_program(a: Path) -> None:
    """Point the decode program at a file the manifest does not list (so never hash-checked)."""
    shutil.copy(a / "model.pte", a / "evil.pte")
    edit_manifest(a, lambda m: m["programs"]["decode"].update(file="evil.pte"))


# --- faults --------------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def fake_lower(fail: bool):
    """A backend lower() that writes a model file (half of one, then disk full, if `fail`)."""
    from toolchain.backends import Lowered

    def lower(parts, recipe, target, out_dir, calibration=None):
        (out_dir / "model.pte").write_bytes(b"\0" * 1000)
        if fail:
            enospc()
        return Lowered(files=["model.pte"], programs={})

    return lower


def default_sigint():
    """Popen preexec_fn: a background shell starts children with SIGINT ignored; make Ctrl-C work."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Recorder(Session):
    """A fake runtime Session: records every decode position, emits EOS at step `eos_at`."""

    def __init__(self, vocab: int, eos_id: int, eos_at: int | None):
        self.vocab, self.eos_id, self.eos_at, self.positions = vocab, eos_id, eos_at, []

    def encode(self, input_ids, attention_mask):
        return []

    def decode(self, token, position, state):
        self.positions.append(position)
        logits = np.zeros(self.vocab, dtype=np.float32)
        logits[self.eos_id if position == self.eos_at else 3 + position % 5] = 1.0
        return logits


# --- fuzzing -------------------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
KEYS = st.one_of(st.text(max_size=12), st.integers(-3, 3), st.booleans(), st.none())  # YAML keys need not be strings
YAML_BITS = [":", ": ", "-", "- ", " ", "  ", "\n", "\t", "[", "]", "{", "}", ",", "'", '"', "&a ", "*a", "!!",
             "!!python/object/apply:os.system ", "!!binary ", "#", "|", ">", "? ", "%YAML 1.1\n", "---\n", "...",
             "<<: ", "name", "max_input_len", "checkpoints", "8", "1e9", ".nan", "null", "~", "true", "@", "`",
             "\\", "\x00", "\x85", "é", "日"]
YAML_TEXT = st.one_of(st.lists(st.sampled_from(YAML_BITS), max_size=30).map("".join), st.text(max_size=60),
                      st.binary(max_size=60))


def mutated(base: dict):
    """(document, names of the keys edited): a valid document changed by 1-3 random edits (set,
    delete or add a key, top level or nested, to a value of any type), or sometimes a document
    that is not a mapping at all (no names)."""
    paths = [(k,) for k in base] + [(k, s) for k, v in base.items() if isinstance(v, dict) for s in v]
    nested = [k for k, v in base.items() if isinstance(v, dict)]
    edit = st.one_of(st.tuples(st.just("set"), st.sampled_from(paths), VALUES),
                     st.tuples(st.just("del"), st.sampled_from(paths), st.none()),
                     st.tuples(st.just("add"), st.tuples(KEYS), VALUES),
                     st.tuples(st.just("add"), st.tuples(st.sampled_from(nested), KEYS), VALUES))

    def apply(edits):
        doc, touched = copy.deepcopy(base), set()
        for op, path, value in edits:
            parent = doc if len(path) == 1 else doc.get(path[0])
            if not isinstance(parent, dict):
                continue
            touched |= {p for p in path if isinstance(p, str)} | {repr(p) for p in path}
            if op == "del":
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        return doc, touched

    return st.one_of(st.lists(edit, min_size=1, max_size=3).map(apply),
                     st.one_of(SCALARS, st.lists(SCALARS, max_size=2)).map(lambda v: (v, set())))
