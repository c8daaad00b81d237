"""Reading a checkpoint directory (as written by `save_pretrained`).

Safetensors only by default: pickle weights (`*.bin`, `*.pt`) can run code when
loaded, so they are refused unless the caller passes `allow_pickle=True`.
Everything that can be wrong with the directory is an `InputError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import arch
from .errors import InputError
from .hashing import sha256_file  # noqa: F401  (re-exported)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class SourceModel:
    path: Path
    config: dict[str, Any]
    model_type: str
    weights: tuple[Path, ...]
    tokenizer_file: Path
    allow_pickle: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def adapter(self):
        return arch.get(self.model_type)

    def file_hashes(self) -> dict[str, str]:
        return {p.name: sha256_file(p) for p in sorted(self.path.iterdir()) if p.is_file()}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "model_type": self.model_type,
                **self.adapter.describe(self.config),
                "weights_bytes": sum(p.stat().st_size for p in self.weights)}

    def load_model(self):
        """The transformers model, fp32, eval mode. Shape mismatches are InputErrors."""
        import torch
        from transformers import AutoModelForSeq2SeqLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForSeq2SeqLM.from_pretrained(
                self.path, local_files_only=True, use_safetensors=not self.allow_pickle,
                dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{self.path}: cannot load weights: {first}") from None
        return model.eval()

    def load_tokenizer(self):
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(self.tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise InputError(f"{self.tokenizer_file}: invalid tokenizer: {str(e).splitlines()[0]}") from None


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{path}: no config.json (not a save_pretrained checkpoint directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path}: invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    return cfg


def _check_safetensors(files: list[Path]) -> None:
    """Open every header; safetensors checks the data covers what the header says."""
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # SafetensorError is not exported under a stable name
            raise InputError(f"{f}: corrupt or truncated safetensors file ({str(e).splitlines()[0]})") from None


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> SourceModel:
    p = Path(path)
    if not p.exists():
        raise InputError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise InputError(f"{p}: a checkpoint is a directory (save_pretrained output), not a file")
    cfg = _read_config(p)
    model_type = cfg.get("model_type")
    arch.get(model_type)  # unknown architecture -> one-line error with the list
    safetensors = sorted(p.glob("*.safetensors"))
    pickles = sorted(f for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if safetensors:
        _check_safetensors(safetensors)
        weights = tuple(safetensors)
    elif pickles:
        if not allow_pickle:
            raise InputError(f"{pickles[0]}: pickle weights can execute code when loaded; refusing. "
                             f"Convert to safetensors, or pass --allow-pickle if you trust the file")
        weights = tuple(pickles)
    else:
        raise InputError(f"{p}: no weights (*.safetensors) found")
    tok = p / "tokenizer.json"
    if not tok.is_file():
        raise InputError(f"{p}: no tokenizer.json (save a fast tokenizer with "
                         f"AutoTokenizer.from_pretrained(dir).save_pretrained(dir))")
    return SourceModel(path=p.resolve(), config=cfg, model_type=model_type, weights=weights,
                       tokenizer_file=tok, allow_pickle=allow_pickle)
