"""Self-contained probe runner: `python -m toolchain.probe.runner ARTIFACT [options]` prints JSON.

Measures, in this fresh process: load_ms (open the runtime Session), then `warmup`
unmeasured and `runs` measured generations of exactly `output_len` tokens (EOS is
ignored so runs are comparable) from a fixed input of `input_len` tokens:
ttft_ms = encode + first decode step; decode_ms_per_token = the later steps.
Every report says its "kind": "measured" here, or "estimate" for a backend whose
program cannot run on this host (an NPU binary): then the figures are the
compiler's estimate from the artifact and nothing is executed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 3)


def _environment(threads, artifact, runtime_versions: dict) -> dict:
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": threads,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": dict(artifact.meta.tool_versions),
        "runtime_versions": runtime_versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _native(head: dict, artifact, ids, inputs, runs: int, warmup: int, t: int, threads: int,
            native_device: str | None) -> dict:
    """The probe measured by edgeseq-runner itself (its own process: load, TTFT, per-token decode,
    tokens/s, peak RSS), no Python in the loop. Under qemu the kind is "emulated"."""
    from .. import native

    session = native.open_session(artifact, threads, native_device)
    try:
        r = native.probe(session, ids, inputs, runs, warmup, t)
    finally:
        session.close()
    dev = session.device
    env = _environment(r["threads"], artifact, {"executorch": native.ET_VERSION})
    env["runner_binary"] = str(session.binary)
    if dev.kind == "emulated":
        env["cpu"] = f"{dev.name} -cpu {native.QEMU_CPU} (emulated on {env['cpu']})"
    return {**head, "kind": dev.kind, "runner": "native", "runs": runs, "warmup": warmup,
            "encoder_len": r["encoder_len"], "load_ms": r["load_ms"], "ttft_ms": r["ttft_ms"],
            "decode_ms_per_token": r["decode_ms_per_token"], "tokens_per_s": r["tokens_per_s"],
            "peak_rss_mb": r["peak_rss_mb"], "artifact_bytes": artifact.total_bytes, "environment": env}


def probe(path: str, runs: int, warmup: int, input_len: int | None, output_len: int | None,
          threads: int | None, device: str = "local", progress=None, runner: str = "python",
          native_device: str | None = None) -> dict:
    from .. import backends
    from ..artifact import open_artifact
    from ..errors import InputError
    from ..generate import greedy
    from ..inputs import Context

    artifact = open_artifact(path)
    meta = artifact.meta
    recipe, target, tokens = meta.recipe, meta.target, meta.tokens
    backend = backends.for_target(target)
    threads = threads or target.threads
    kw = tokens.decoding()
    n_prompt = len(kw["prompt"])  # forced prompt tokens (Whisper): decoded before the first output token
    t = min(output_len or recipe.max_output_len, recipe.max_output_len - n_prompt)
    # The input kind's fixed input: seeded random tokens (text); a synthetic signal's log-mel
    # features (audio, whose encoder length is the model's).
    codec = meta.input.codec
    s = codec.probe_length(meta.input.as_dict(), min(input_len or recipe.max_input_len, recipe.max_input_len))
    head = {"artifact": os.path.abspath(path), "device": device, "runtime": f"{target.runtime}/{target.backend}",
            "checkpoint": meta.checkpoint.name, "recipe": recipe.name, "target": target.name,
            "input_len": s, "encoder_len": recipe.max_input_len, "output_len": t}
    if backend.capabilities.estimates:
        # An NPU program that cannot run here: the compiler's estimate, labelled as such.
        return {**head, "kind": "estimate", "runs": 0, "warmup": 0, **backend.estimate(artifact, t),
                "environment": {"platform": "estimate (not run)", "threads": None,
                                "versions": dict(meta.tool_versions),
                                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    ok, why = backend.available()
    if ok:
        ok, why = backend.can_execute()
    if not ok:
        raise InputError(f"cannot run a {target.runtime} artifact with {sys.executable}: {why}")
    encoded = codec.probe_input(Context(meta.input.as_dict(), recipe.max_input_len), tokens, s)
    ids, inputs = encoded.ids, encoded.arrays

    if runner == "native":
        return _native(head, artifact, ids, inputs, runs, warmup, t, threads, native_device)
    backend.preload()
    t0 = time.perf_counter()
    session = backend.open_session(artifact, threads=threads)
    load_s = time.perf_counter() - t0
    ttft, per_token, total = [], [], []
    for i in range(warmup + runs):
        g = greedy(session, ids, inputs=inputs, max_input_len=recipe.max_input_len,
                   max_output_len=recipe.max_output_len, max_new_tokens=t, force_length=True, **kw)
        if i >= warmup:
            ttft.append(g.encode_s + sum(g.step_s[: n_prompt + 1]))
            per_token.extend(g.step_s[n_prompt + 1:])
            total.append(g.encode_s + sum(g.step_s))
        if progress:
            progress(i + 1, warmup + runs)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **head, "kind": "measured", "runner": "python", "runs": runs, "warmup": warmup,
        # The length encode ran at: the shortest of the recipe's encode_lengths that holds the input.
        "encoder_len": session.encode_length or head["encoder_len"],
        "load_ms": round(load_s * 1000, 3),
        "ttft_ms": {"p50": _pct(ttft, 50), "p90": _pct(ttft, 90)},
        "decode_ms_per_token": {"p50": _pct(per_token, 50), "p90": _pct(per_token, 90)} if per_token else None,
        "tokens_per_s": round(t * runs / sum(total), 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "artifact_bytes": artifact.total_bytes,
        "environment": _environment(threads, artifact, backend.versions()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("artifact")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--input-len", type=int)
    ap.add_argument("--output-len", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device-label", default="local")
    ap.add_argument("--progress", action="store_true", help="emit {progress, total} JSON lines")
    ap.add_argument("--runner", choices=["python", "native"], default="python")
    ap.add_argument("--native-device", help="where the native runner executes (qemu-aarch64); default: here")
    a = ap.parse_args(argv)
    from ..errors import InputError

    def progress(i, n):
        print(json.dumps({"progress": i, "total": n}), flush=True)

    try:
        report = probe(a.artifact, a.runs, a.warmup, a.input_len, a.output_len, a.threads, a.device_label,
                       progress if a.progress else None, a.runner, a.native_device)
    except InputError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
