"""checkpoint + recipe + target -> artifact directory (the `export` command's library side)."""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import backends
from .artifact import FORMAT_VERSION, MANIFEST, file_entries, open_artifact, staging_dir, write_json_atomic
from .checkpoint import SourceModel
from .errors import InputError
from .specs import Recipe, Target


def base_versions() -> dict[str, str]:
    return {"edgeseq": version("edgeseq"), "torch": version("torch"), "transformers": version("transformers"),
            "python": platform.python_version()}


def build_parts(source: SourceModel, recipe: Recipe, model=None, cache_mode: str = "buffer"):
    model = model if model is not None else source.load_model()
    return source.adapter.build(model, recipe.max_input_len, recipe.max_output_len, cache_mode)


def calibration_inputs(source: SourceModel, recipe: Recipe, limit: int = 32) -> list[list[int]]:
    """Tokenized inputs for static quantization: the recipe's JSONL, else the checkpoint's eval.jsonl,
    else a few built-in strings. Inputs longer than max_input_len are skipped."""
    from .verify import BUILTIN_INPUTS, load_eval

    if recipe.calibration:
        rows = load_eval(Path(recipe.calibration))
    elif (source.path / "eval.jsonl").is_file():
        rows = load_eval(source.path / "eval.jsonl")
    else:
        rows = [{"input": s} for s in BUILTIN_INPUTS]
    tok = source.load_tokenizer()
    out = [ids for ids in (tok.encode(r["input"]).ids for r in rows) if len(ids) <= recipe.max_input_len]
    return out[:limit]


def export(source: SourceModel, recipe: Recipe, target: Target, out: Path, force: bool = False):
    """Export one artifact, atomically. Returns the opened Artifact."""
    if Path(out).exists() and not force:  # fail before minutes of work, not after
        raise InputError(f"{out} already exists; pass --force to replace it")
    backend = backends.for_target(target)
    backend.check(recipe, target)  # a recipe the target cannot honour fails here, before any work
    t0 = time.time()
    model = source.load_model()
    params = sum(p.numel() for p in model.parameters())
    parts = build_parts(source, recipe, model, backend.CACHE_MODE)
    with staging_dir(out, force) as tmp:
        calibration = calibration_inputs(source, recipe) if recipe.quantization else None
        lowered = backend.lower(parts, recipe, target, tmp, calibration=calibration)
        shutil.copyfile(source.tokenizer_file, tmp / "tokenizer.json")
        files = file_entries(tmp, [*lowered.files, "tokenizer.json"])
        model_bytes = sum(files[f]["bytes"] for f in lowered.files)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": {**source.describe(), "params": params, "sha256": source.file_hashes()},
            "recipe": recipe.to_dict(),
            "target": target.to_dict(),
            "programs": lowered.programs,
            "tokens": {"decoder_start_token_id": parts.decoder_start_token_id,
                       "eos_token_id": parts.eos_token_id, "pad_token_id": parts.pad_token_id,
                       "vocab_size": parts.vocab_size, "tokenizer": "tokenizer.json"},
            **lowered.report,
            "sizes": {"model_bytes": model_bytes, "fp32_param_bytes": params * 4,
                      "ratio_to_fp32_params": round(model_bytes / (params * 4), 4)},
            "files": files,
            "tool_versions": {**base_versions(), **lowered.tool_versions},
            "export_seconds": round(time.time() - t0, 1),
            "verify": None,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return open_artifact(out)
