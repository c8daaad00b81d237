"""Commands on checkpoints: inspect (also artifacts), convert, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import progress
from . import emit


@click.command()
@click.argument("path", type=click.Path())
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights. They can run code: trust them first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect(path: str, allow_pickle: bool, as_json: bool) -> None:
    """Describe a checkpoint (family, sizes, targets) or an artifact (programs, sizes, delegation).

    Example: edgeseq inspect demo/date-t5
    """
    from ..inspection import inspect_path

    data, text = inspect_path(Path(path), allow_pickle)
    emit(data, as_json, text)


@click.command()
@click.argument("source", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="save_pretrained directory to write.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Weight dtype of the written model.safetensors.")
@click.option("--force", is_flag=True, help="Overwrite the files of an existing non-empty OUTPUT directory.")
def convert(source: str, out: str, dtype: str, force: bool) -> None:
    """Convert a CTranslate2 (faster-whisper) Whisper model directory to a save_pretrained one.

    SOURCE holds model.bin, config.json and tokenizer.json, as faster-whisper models do.

    Example: edgeseq convert whisper-tiny.en-ct2 -o build/whisper-tiny.en
    """
    from ..convert import convert_ct2_whisper

    with progress.stage(f"convert: reading {source}"):
        convert_ct2_whisper(Path(source), Path(out), dtype=dtype, force=force)
    click.echo(str(out))


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-t", "--target", "target_name", required=True, help="Target name (see `edgeseq targets`) or YAML file.")
@click.option("-r", "--recipe", "recipe_name", default="fp32", show_default=True,
              help="Recipe name (see `edgeseq recipes`) or YAML file.")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Artifact directory to create.")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT if it is an earlier edgeseq artifact (atomically, after a successful export); "
                   "any other existing directory is refused, never deleted.")
@click.option("--max-input-len", type=int, help="Override the recipe's max_input_len (input tokens encode takes).")
@click.option("--max-output-len", type=int, help="Override the recipe's max_output_len (decode's KV cache slots).")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle (.bin) weights. They can run code: trust them first.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def export(checkpoint: str, target_name: str, recipe_name: str, out: str, force: bool, max_input_len: int | None,
           max_output_len: int | None, allow_pickle: bool, as_json: bool) -> None:
    """Export CHECKPOINT to one artifact directory for a target and recipe.

    CHECKPOINT is a save_pretrained directory, or a Hugging Face id (org/name) already in the
    local Hugging Face cache (nothing is downloaded).

    \b
    Examples:
      edgeseq export demo/date-t5 -t executorch-xnnpack -r fp32 -o build/a
      edgeseq export demo/date-t5 -t onnx-cpu -r int8 --max-input-len 128 -o build/b
    """
    from ..api import export as do_export

    art = do_export(checkpoint, target_name, recipe_name, out, force=force, max_input_len=max_input_len,
                    max_output_len=max_output_len, allow_pickle=allow_pickle)
    progress.clear()
    m = art.manifest
    summary = {"artifact": str(art.path), "files": m["files"], "sizes": m["sizes"],
               "delegation": m.get("delegation"), "export_seconds": m["export_seconds"]}
    emit(summary, as_json, export_text(str(art.path), m))


def export_text(path: str, m: dict[str, Any]) -> str:
    """What `export` prints: the files with sizes and hashes, the size ratio, delegation."""
    lines = [f"wrote {path} in {m['export_seconds']} s"]
    for name, e in m["files"].items():
        lines.append(f"  {name:<16} {e['bytes']:>12,d} B  sha256 {e['sha256'][:12]}")
    lines.append(f"  model bytes / (params x 4) = {m['sizes']['ratio_to_fp32_params']}")
    for prog, d in (m.get("delegation") or {}).items():
        ops = f"; {d['delegate_ops']} operators per call" if "delegate_ops" in d else ""
        lines.append(f"  {prog}: {d['delegated_nodes']} nodes delegated, {d['portable_nodes']} portable "
                     f"({d['delegated_fraction']:.1%} in {d['delegate']}{ops}) {d['portable_ops'] or ''}")
    return "\n".join(lines)


COMMANDS = [inspect, convert, export]
