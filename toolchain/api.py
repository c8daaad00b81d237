"""The Python API: what the `edgeseq` commands do, as functions (`import edgeseq`).

    import edgeseq

    art = edgeseq.export("demo/date-t5", target="executorch-xnnpack", recipe="fp32", output="build/a")
    report = edgeseq.verify("build/a")           # a dict; report["passed"], report["failures"]
    text = edgeseq.run("build/a", "the 3rd of March, 2021")
    probe = edgeseq.probe("build/a", runs=10)    # the probe report (a dict), measured in a fresh process

Bad input raises `edgeseq.InputError` (the CLI's exit 2) with a one-line message; nothing
here prints (no progress lines unless `edgeseq.progress.configure()` is called) and nothing
calls sys.exit. `verify` returns its report even when the check fails; the CLI turns
`passed: false` into exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import Artifact, open_artifact


def export(checkpoint: str | Path, target: str, recipe: str = "fp32", output: str | Path = "artifact", *,
           force: bool = False, max_input_len: int | None = None, max_output_len: int | None = None,
           allow_pickle: bool = False) -> Artifact:
    """Export a checkpoint directory (or a Hugging Face id already in the local cache) to one
    artifact directory, atomically. `target` and `recipe` are shipped names or YAML paths."""
    from .checkpoint import load_checkpoint
    from .export import export as do_export
    from .specs import load_recipe, load_target, with_lengths

    source = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    r = with_lengths(load_recipe(recipe), max_input_len, max_output_len)
    return do_export(source, r, load_target(target), Path(output), force=force)


def verify(artifact: str | Path, *, checkpoint: str | None = None, eval_file: str | None = None,
           limit: int | None = None, allow_pickle: bool = False, runner: str | None = None,
           device: str | None = None, metric: str | None = None, language: str | None = None,
           task: str | None = None) -> dict[str, Any]:
    """Parity of the artifact against eager transformers (or its structure, where the runtime
    cannot execute here); recorded in the manifest and returned. `runner="native"` executes it
    with the C++ edgeseq-runner, `device="qemu-aarch64"` on emulated ARM64. `metric` (exact, wer,
    cer, chrf, bleu) overrides the recipe's task metric. `language`/`task` (Whisper) choose the
    decoder prompt for eval rows without their own "language"/"task"."""
    from .verify import verify_artifact

    return verify_artifact(open_artifact(artifact), checkpoint=checkpoint, eval_file=eval_file, limit=limit,
                           allow_pickle=allow_pickle, runner=runner, device=device, metric=metric,
                           language=language, task=task)


def run(artifact: str | Path, text: str, *, max_new_tokens: int | None = None, min_new_tokens: int = 0,
        truncate: bool = False, allow_unknown: bool = False, threads: int | None = None,
        runner: str | None = None, device: str | None = None, language: str | None = None,
        task: str | None = None) -> str:
    """Greedy generation from `text` (a WAV path for audio artifacts); returns the output text.
    `language`/`task` (Whisper): as generate(language=..., task=...); `toolchain.runner.generate`
    also returns the ids, the prompt and the language it detected."""
    from .runner import generate_text

    out, _note = generate_text(str(artifact), text, max_new_tokens, min_new_tokens, truncate, threads, allow_unknown,
                               runner, device, language, task)
    return out


def probe(artifact: str | Path, *, device: str = "local", runs: int = 10, warmup: int = 2,
          input_len: int | None = None, output_len: int | None = None, threads: int | None = None,
          python: str | None = None, runner: str | None = None) -> dict[str, Any]:
    """Latency probe (load, TTFT, per-token decode, tokens/s, memory) in a fresh process."""
    from .probe.devices import probe_artifact

    return probe_artifact(artifact, device=device, runs=runs, warmup=warmup, input_len=input_len,
                          output_len=output_len, threads=threads, python=python, runner=runner)
