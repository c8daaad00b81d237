"""Reading a checkpoint directory (as written by `save_pretrained`).

Safetensors only by default: pickle weights (`*.bin`, `*.pt`) can run code when
loaded, so they are refused unless the caller passes `allow_pickle=True`.
Everything that can be wrong with the directory is an `InputError` naming the file:
config.json (missing, not JSON, sizes that are not positive integers, unsupported
model_type), the weights (corrupt or truncated safetensors; tensors missing, extra or
of another shape than config.json implies: transformers would re-initialise or drop
them with only a warning), and the tokenizer (tokenizer.json, or Marian's or T5's SentencePiece
files: see tokenizer.py; unreadable, or ids past the vocabulary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import arch
from .errors import InputError, first_line, read_json_object
from .hashing import sha256_file  # noqa: F401  (re-exported)
from .tokenizer import CheckpointTokenizer, TextTokenizer
from .tokenizer import find as find_tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# config.json sizes, across the families in arch/: when present (not null) each must be a
# positive integer (transformers would otherwise fail deep inside model construction).
SIZE_KEYS = ("vocab_size", "decoder_vocab_size", "d_model", "d_ff", "d_kv", "num_heads", "num_layers",
             "num_decoder_layers", "encoder_layers", "decoder_layers", "encoder_attention_heads",
             "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings")


@dataclass(frozen=True)
class SourceModel:
    path: Path
    config: dict[str, Any]
    model_type: str
    weights: tuple[Path, ...]
    tokenizer: CheckpointTokenizer
    allow_pickle: bool
    hub_id: str = ""  # set when the checkpoint was found in the Hugging Face cache by its id

    @property
    def name(self) -> str:
        # A hub snapshot's directory is a commit hash: the model's name says more.
        return self.hub_id.split("/")[-1] if self.hub_id else self.path.name

    @property
    def adapter(self) -> arch.Adapter:
        return arch.get(self.model_type)

    def file_hashes(self) -> dict[str, str]:
        return {p.name: sha256_file(p) for p in sorted(self.path.iterdir()) if p.is_file()}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), **({"hub_id": self.hub_id} if self.hub_id else {}),
                "model_type": self.model_type,
                **self.adapter.describe(self.config),
                "weights_bytes": sum(p.stat().st_size for p in self.weights)}

    @property
    def weights_label(self) -> Path:
        """What error messages name: the weights file, or the directory when it is sharded."""
        return self.weights[0] if len(self.weights) == 1 else self.path

    def load_model(self):
        """The transformers model, fp32, eval mode. Weights that do not fit config.json are InputErrors."""
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            # The family's auto class (AutoModelForSeq2SeqLM; Whisper: AutoModelForSpeechSeq2Seq).
            auto = getattr(transformers, self.adapter.auto_model)
            model, info = auto.from_pretrained(
                self.path, local_files_only=True, use_safetensors=not self.allow_pickle,
                dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True)
        except Exception as e:  # config values transformers rejects, unreadable files: all input
            raise InputError(f"{self.path}: cannot load the model: {first_line(e)}") from e
        _check_loading_info(info, self.weights_label)
        return model.eval()

    def load_tokenizer(self) -> TextTokenizer:
        return self.tokenizer.load()


def _check_loading_info(info: dict, label: Path) -> None:
    """transformers re-initialises missing or mis-shaped tensors and drops unexpected ones with
    only a warning: for an export that is a silently wrong model, so each is an error here."""
    def more(n: int) -> str:
        return f" (and {n - 1} more)" if n > 1 else ""

    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0]
        if isinstance(first, (tuple, list)) and len(first) >= 3:  # (key, shape in file, shape of model)
            what = f"{first[0]!r} is {list(first[1])} in the file, config.json implies {list(first[2])}"
        else:
            what = f"{first!r} has another shape than config.json implies"
        raise InputError(f"{label}: weights do not match config.json: {what}{more(len(mismatched))}")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise InputError(f"{label}: weights do not match config.json: no tensor {missing[0]!r}"
                         f"{more(len(missing))}")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise InputError(f"{label}: weights do not match config.json: tensor {unexpected[0]!r} is not "
                         f"part of the model config.json describes{more(len(unexpected))}")
    errors = info.get("error_msgs") or []
    if errors:
        raise InputError(f"{label}: cannot load weights: {str(errors[0]).strip().splitlines()[0]}")


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{path}: no config.json (not a save_pretrained checkpoint directory)")
    cfg = read_json_object(cfg_path)
    for key in SIZE_KEYS:
        v = cfg.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise InputError(f"{cfg_path}: {key!r} must be a positive integer, got {v!r:.60}")
    return cfg


def _check_tokenizer(tok: CheckpointTokenizer, cfg_path: Path, vocab_size: Any) -> None:
    """Every id the tokenizer can produce must index the model's embedding: a tokenizer from
    another checkpoint would otherwise read past it (or, in a runtime, read garbage)."""
    top = tok.load().max_id()
    if isinstance(vocab_size, int) and top >= vocab_size:
        raise InputError(f"{tok.label}: has token ids up to {top}, but the model's vocabulary "
                         f"({cfg_path.name} vocab_size) is {vocab_size}: the tokenizer does not match the model")


def _check_safetensors(files: list[Path]) -> None:
    """Open every header; safetensors checks the data covers what the header says."""
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # SafetensorError is not exported under a stable name
            raise InputError(f"{f}: corrupt or truncated safetensors file ({str(e).splitlines()[0]})") from None


HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def from_hub_cache(repo_id: str) -> Path | None:
    """A Hugging Face hub id (`org/name`) -> its snapshot in the local Hugging Face cache
    (HF_HUB_CACHE / HF_HOME, as huggingface_hub resolves them), offline; None if not cached.
    edgeseq never downloads: a model must already be on this machine."""
    if not HUB_ID_RE.fullmatch(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 (not cached, or no huggingface_hub: both mean "not here")
        return None


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> SourceModel:
    p, hub_id = Path(path), ""
    if not p.exists():
        cached = from_hub_cache(str(path))
        if cached is None:
            hint = (" (a Hugging Face id? edgeseq never downloads: only local directories and ids already in "
                    "the local Hugging Face cache work)") if HUB_ID_RE.fullmatch(str(path)) else ""
            raise InputError(f"checkpoint not found: {p}{hint}")
        p, hub_id = cached, str(path)
    if not p.is_dir():
        raise InputError(f"{p}: a checkpoint is a directory (save_pretrained output), not a file")
    cfg = _read_config(p)
    model_type = cfg.get("model_type")
    try:
        adapter = arch.get(model_type)  # unknown architecture -> one-line error with the list
    except InputError as e:
        raise InputError(f"{p / 'config.json'}: {e}") from None
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
    tok = find_tokenizer(p, adapter.family)
    _check_tokenizer(tok, p / "config.json", adapter.describe(cfg).get("vocab_size"))
    return SourceModel(path=p.resolve(), config=cfg, model_type=str(model_type), weights=weights,
                       tokenizer=tok, allow_pickle=allow_pickle, hub_id=hub_id)
