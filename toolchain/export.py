"""checkpoint + recipe + target -> artifact directory (the `export` command's library side)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import backends, evalset, progress, schemes
from .artifact import MANIFEST, check_replaceable, file_entries, open_artifact, staging_dir, write_json_atomic
from .checkpoint import SourceModel
from .errors import InputError
from .inputs import Context, codec_for
from .logs import native_logs
from .manifest import FORMAT_VERSION, parse
from .specs import Recipe, Target


def base_versions() -> dict[str, str]:
    from . import source_digest

    return {"edgeseq": version("edgeseq"), "edgeseq_source": source_digest(), "torch": version("torch"),
            "transformers": version("transformers"), "python": platform.python_version()}


def fuse_relative_attention(encode: Any) -> None:
    """The recipe's encoder_attention: fused on an encode program (arch/programs.py)."""
    from .arch.programs import EncoderStack

    if not isinstance(encode, EncoderStack):
        raise InputError(f"encoder_attention: fused needs a layer-stack encoder, got {type(encode).__name__}")
    encode.fuse_relative_attention()


def build_parts(source: SourceModel, recipe: Recipe, model=None, cache_mode: str = "buffer"):
    """The split for this recipe, plus one shorter encode per recipe.encode_lengths entry
    (built by the adapter at that length, sharing the full encode's embedding module so the
    two quantize and store it once)."""
    from .padded_encode import PaddedEncode

    model = model if model is not None else source.load_model()
    parts = source.adapter.build(model, recipe.max_input_len, recipe.max_output_len, cache_mode)
    if recipe.encode_lengths and (not codec_for(parts.input.get("kind")).padded or not parts.cross_bias):
        raise InputError(f"recipe {recipe.name}: encode_lengths needs a text family (padded token inputs); "
                         f"{source.adapter.family} encodes {parts.input.get('kind')}")
    memory = recipe.cross_attention == "memory"
    fused = recipe.encoder_attention == "fused"
    if memory:
        parts.with_memory_cross()
    if fused:
        fuse_relative_attention(parts.encode)
    for length in recipe.encode_lengths:
        bucket = source.adapter.build(model, length, recipe.max_output_len, cache_mode)
        inner = (bucket.with_memory_cross() if memory else bucket).encode
        if fused:
            fuse_relative_attention(inner)
        if hasattr(parts.encode, "embed"):
            inner.embed = parts.encode.embed
        parts.encode_buckets[length] = PaddedEncode(inner, length, recipe.max_input_len).eval()
    return parts


def calibration_inputs(source: SourceModel, recipe: Recipe, limit: int = 32, spec: dict | None = None) -> list:
    """Inputs for static quantization, from the recipe's JSONL, else the checkpoint's eval.jsonl,
    else the built-in rows (evalset.choose), read by the input codec of `spec` (the manifest's
    "input"; None: text): token id lists for text (inputs longer than max_input_len skipped),
    (input_features,) tuples for log-mel audio."""
    spec = spec or {"kind": "text"}
    codec = codec_for(spec.get("kind"))
    rows = evalset.choose(recipe.calibration or None, source.path, codec)
    ctx = Context(spec, recipe.max_input_len, source.load_tokenizer)
    return codec.calibration(rows.rows, ctx, rows.base, limit)


def input_spec(source: SourceModel, parts) -> dict[str, Any]:
    """The manifest's "input": how run/verify/probe turn user input into the encode program's
    inputs (the parts' input kind's codec says: text as is, log_mel with the checkpoint's
    feature extractor settings)."""
    return codec_for(parts.input.get("kind")).manifest_spec(source.path, parts.input)


def check_fits(source: SourceModel, recipe: Recipe, target: Target) -> backends.Backend:
    """Every refusal export makes before loading the model, as one InputError: what the target's
    backend cannot honour (its check: schemes, options, capabilities) and what the family's input
    rules out (encode_lengths needs padded token inputs). `inspect` asks the same question, so a
    target it lists as fitting is one export accepts. Returns the backend."""
    recipe = family_recipe(source, recipe)[0]  # the schemes export will use (export applies it too)
    backend = backends.for_target(target)
    backend.check(recipe, target)
    kind = source.describe().get("input", "text")
    if recipe.encode_lengths and kind != "text":
        raise InputError(f"recipe {recipe.name}: encode_lengths needs a text family (padded token inputs); "
                         f"{source.adapter.family} encodes {kind}")
    return backend


def family_recipe(source: SourceModel, recipe: Recipe) -> tuple[Recipe, dict[str, dict[str, str]]]:
    """The recipe with the family's quantization defaults applied (Adapter.keep_8bit: a component the
    family keeps at 8 bits where the recipe asks 4), and the changes made (component -> asked, used,
    why; {} when none or the recipe says `family_defaults: false`)."""
    if not recipe.family_defaults:
        return recipe, {}
    changes = schemes.keep_8bit(recipe.quantization, source.adapter.keep_8bit)
    if not changes:
        return recipe, {}
    used = {**recipe.quantization, **{c: ch["used"] for c, ch in changes.items()}}
    return dataclasses.replace(recipe, quantization=used), changes


def export(source: SourceModel, recipe: Recipe, target: Target, out: Path, force: bool = False):
    """Export one artifact, atomically. Returns the opened Artifact."""
    if Path(out).exists() or Path(out).is_symlink():  # fail before minutes of work, not after
        if not force:
            raise InputError(f"{out} already exists; pass --force to replace it")
        check_replaceable(Path(out))
    recipe, kept = family_recipe(source, recipe)
    backend = check_fits(source, recipe, target)  # what the target cannot honour fails here, before any work
    for comp, ch in kept.items():  # after the checks: a refused export stays one line
        progress.note(f"note: {source.adapter.family} keeps the {comp} at {ch['used']} (recipe {recipe.name} "
                      f"asks {ch['asked']}): {ch['why']}; `family_defaults: false` in a recipe turns this off")
    t0 = time.time()
    with progress.stage(f"export: loading {source.name} ({source.model_type})"):
        model = source.load_model()
        params = sum(p.numel() for p in model.parameters())
    with progress.stage(f"export: splitting into encode/decode (in {recipe.max_input_len}, "
                        f"out {recipe.max_output_len})"):
        parts = build_parts(source, recipe, model, backend.capabilities.cache_mode)
        if backend.capabilities.next_token:
            parts.with_next_token()
        inputs = input_spec(source, parts)
    with staging_dir(out, force) as tmp:
        calibration = None
        if recipe.quantization:
            with progress.stage("export: reading calibration inputs"):
                calibration = calibration_inputs(source, recipe, spec=inputs)
        # Converters' own native log lines (absl, TFLite, ExecuTorch) are hidden unless --verbose.
        with progress.stage(f"export: lowering to {target.name} with recipe {recipe.name}"), \
                native_logs(expected=(InputError,)):
            lowered = backend.lower(parts, recipe, target, tmp, calibration=calibration)
        tokenizer, tokenizer_files = source.tokenizer.save(tmp)  # tokenizer.json, or Marian's SentencePiece files
        files = file_entries(tmp, [*lowered.files, *lowered.verification_files, *tokenizer_files])
        model_bytes = sum(files[f]["bytes"] for f in lowered.files)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "checkpoint": {**source.describe(), "params": params, "sha256": source.file_hashes()},
            "recipe": recipe.to_dict(),
            "target": target.to_dict(),
            "programs": lowered.programs,
            "input": inputs,
            "tokens": {"decoder_start_token_id": parts.decoder_start_token_id,
                       "eos_token_id": parts.eos_token_id, "pad_token_id": parts.pad_token_id,
                       "vocab_size": parts.vocab_size, "tokenizer": tokenizer, **parts.generation()},
            **lowered.report,
            "sizes": {"model_bytes": model_bytes, "fp32_param_bytes": params * 4,
                      "ratio_to_fp32_params": round(model_bytes / (params * 4), 4)},
            "verification_files": lowered.verification_files,
            "files": files,
            "tool_versions": {**base_versions(), **lowered.tool_versions},
            **({"family_defaults": kept} if kept else {}),
            "export_seconds": round(time.time() - t0, 1),
            "verify": None,
        }
        parse(manifest, str(out / MANIFEST))  # what a backend wrote is held to the loader before it lands
        write_json_atomic(tmp / MANIFEST, manifest)
    return open_artifact(out)
