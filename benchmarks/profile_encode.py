"""Where an edgeseq ExecuTorch program spends its time: ETDump + Inspector per-op breakdown
(XNNPACK reports each of its operators) of `encode` (default) or of one `decode` step
(--decode), next to the same encode on LiteRT and ONNX Runtime, measured interleaved.

    .venv/bin/python benchmarks/profile_encode.py build/bench/t5-small/fp32 build/bench/t5-small/int8 \\
        [--compare build/bench/t5-small/litert-cpu-fp32 build/bench/t5-small/onnx-cpu-fp32] [--runs 20]
    .venv/bin/python benchmarks/profile_encode.py build/bench/t5-small/mixed --decode

Prints, per ExecuTorch artifact: Method::execute, the delegate call, the sum of the XNNPACK
operators inside it (the difference is the delegate's own per-call work), time per operator
kind, and the fully-connected GEMMs' achieved GFLOP/s (from the model's shapes); then the
encode medians of every artifact, interleaved.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, input_ids  # noqa: E402


def encoder_gemm_flops(manifest: dict, cfg: dict) -> float:
    """FLOPs of the encode program's linears: encoder layers + every decoder layer's cross K/V."""
    s = manifest["recipe"]["max_input_len"]
    d, inner, dff = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"]
    ff = 3 if str(cfg.get("feed_forward_proj", "relu")).startswith("gated") else 2
    enc = cfg["num_layers"] * (4 * d * inner + ff * d * dff)
    cross = (cfg.get("num_decoder_layers") or cfg["num_layers"]) * 2 * d * inner
    return 2.0 * s * (enc + cross)


def etdump_profile(path: Path, runs: int, threads: int, method: str = "encode") -> dict:
    import json

    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    man = json.loads((path / "manifest.json").read_text())
    if man["recipe"].get("encoder_attention") == "fused":  # the program calls edgeseq's own kernel
        from toolchain.backends.executorch import kernels

        kernels.load()
    m = portable_lib._load_for_executorch(str(path / "model.pte"), data_path=str(path / "weights.ptd"),
                                          enable_etdump=True, debug_buffer_size=0)
    s = man["recipe"]["max_input_len"]
    ids = torch.tensor([input_ids(man["tokens"]["vocab_size"], s, man["tokens"]["eos_token_id"])])
    mask = torch.ones(1, s, dtype=torch.long)
    if method == "encode":
        for _ in range(runs):
            m.run_method("encode", (ids, mask))
    else:  # decode steps on this input's cross K/V (computed by a second, unprofiled load)
        plain = portable_lib._load_for_executorch(str(path / "model.pte"), data_path=str(path / "weights.ptd"))
        state = list(plain.run_method("encode", (ids, mask)))
        steps = min(man["recipe"]["max_output_len"], 32)
        names = [i["name"] for i in man["programs"]["decode"]["inputs"]]  # a next-token decode takes token_bias last
        bias = [torch.zeros(1, man["tokens"]["vocab_size"])] if names[-1] == "token_bias" else []
        for _ in range(max(1, runs // 4)):
            for pos in range(steps):
                m.run_method("decode", (torch.tensor([[5]]), torch.tensor([pos]), *state, *bias))
    with tempfile.TemporaryDirectory() as tmp:
        m.write_etdump_result_to_file(f"{tmp}/e.etdp", f"{tmp}/d.bin")
        ins = Inspector(etdump_path=f"{tmp}/e.etdp")
    kinds, total = defaultdict(float), {}
    for blk in ins.event_blocks:
        if blk.name != "Execute":
            continue
        for ev in blk.events:
            t = ev.perf_data.raw if ev.perf_data else None
            if not t:
                continue
            med = float(np.median(t[1:] if len(t) > 1 else t))  # drop the first (cold) call
            if ev.delegate_debug_identifier is not None:
                kinds[re.sub(r" #\d+$", "", str(ev.delegate_debug_identifier))] += med
            elif ev.name in ("DELEGATE_CALL", "Method::execute"):
                total[ev.name] = total.get(ev.name, 0.0) + med
            elif ev.name.startswith("edgeseq"):  # edgeseq's kernels (encoder_attention: fused), outside the delegate
                kinds[f"{ev.name} (edgeseq kernel)"] += med
    return {"kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])), "total": total, "manifest": man}


class Encoder:
    """encode() of any edgeseq artifact through its Session."""

    def __init__(self, path: Path, threads: int):
        from toolchain import backends
        from toolchain.artifact import open_artifact
        from toolchain.generate import pad

        art = open_artifact(path)
        self.session = backends.for_target(art.target).open_session(art, threads=threads)
        tok = art.manifest["tokens"]
        s = art.recipe.max_input_len
        self.args = pad(input_ids(tok["vocab_size"], s, tok["eos_token_id"]), s, tok["pad_token_id"])

    def once(self) -> tuple[float, float]:
        """(wall, process CPU) seconds: CPU > wall means the threads really ran in parallel."""
        t, c = time.perf_counter(), time.process_time()
        self.session.encode(*self.args)
        return time.perf_counter() - t, time.process_time() - c


def decode_weight_bytes(man: dict) -> float:
    """Bytes of the decode program's linears and lm head as the manifest's quantization report estimates them."""
    q = man.get("quantization") or {}
    if not q:
        return float("nan")
    head = q["lm_head"]["estimated_bytes"] if q["lm_head"]["tensors"] else q["embeddings"]["estimated_bytes"]
    return q["decoder"]["estimated_bytes"] + head  # a tied head reads the embedding matrix


def decode_report(path: Path, runs: int, threads: int) -> None:
    """One decode step: Method::execute vs XNNPACK operators by kind; the FC GEMMs' achieved weight
    bandwidth; and the Python-side step time of the Session loop for comparison."""
    p = etdump_profile(path, runs, threads, method="decode")
    man = p["manifest"]
    ops = sum(p["kinds"].values())
    fc = sum(v for k, v in p["kinds"].items() if k.startswith("Fully Connected"))
    wb = decode_weight_bytes(man)
    print(f"\n{path.name} decode step ({man['recipe']['name']}): Method::execute {p['total'].get('Method::execute', 0):.3f} ms, "
          f"delegate calls {p['total'].get('DELEGATE_CALL', 0):.3f} ms, XNNPACK operators {ops:.3f} ms")
    for k, v in list(p["kinds"].items())[:10]:
        print(f"  {v:8.3f} ms  {k}")
    if fc and wb == wb:
        print(f"  decoder linears + lm head ~{wb / 1e6:.1f} MB (manifest estimate) -> "
              f"{wb / fc / 1e6:.1f} GB/s while in FC GEMMs")
    from common import ArtifactRunner

    r = ArtifactRunner(path, threads=threads)
    steps = []
    for _ in range(max(3, runs // 4)):
        steps += r.once()[1]
    print(f"  the Session loop's per-token time (Python greedy, argmax over the vocabulary): {np.median(steps) * 1e3:.3f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path, help="executorch-xnnpack artifact dirs to profile")
    ap.add_argument("--compare", nargs="*", type=Path, default=[], help="other artifacts whose encode to time alongside")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", action="store_true", help="profile one decode step instead of encode")
    a = ap.parse_args()
    import json
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if a.decode:
        for path in a.artifacts:
            decode_report(path, a.runs, a.threads)
        return 0
    for path in a.artifacts:
        p = etdump_profile(path, a.runs, a.threads)
        man = p["manifest"]
        ckpt = Path(man["checkpoint"]["path"])
        cfg = json.loads((ckpt if ckpt.is_absolute() else ROOT / ckpt).joinpath("config.json").read_text())
        ops = sum(p["kinds"].values())
        print(f"\n{path.name} ({man['recipe']['name']}, {man['recipe']['max_input_len']} tokens): "
              f"Method::execute {p['total'].get('Method::execute', 0):.2f} ms, delegate call "
              f"{p['total'].get('DELEGATE_CALL', 0):.2f} ms, XNNPACK operators {ops:.2f} ms "
              f"(delegate overhead {p['total'].get('DELEGATE_CALL', 0) - ops:.2f} ms)")
        for k, v in list(p["kinds"].items())[:8]:
            print(f"  {v:8.2f} ms  {k}")
        fc = sum(v for k, v in p["kinds"].items() if k.startswith("Fully Connected"))
        if fc:
            print(f"  fully-connected GEMMs: {encoder_gemm_flops(man, cfg) / fc / 1e6:.0f} GFLOP/s achieved")
    paths = [*a.artifacts, *a.compare]
    encs = {p: Encoder(p, a.threads) for p in paths}
    times = {p: [] for p in paths}
    for i in range(a.runs + 2):
        for p, e in encs.items():
            t = e.once()
            if i >= 2:
                times[p].append(t)
    print(f"\nencode alone, interleaved, {a.threads} threads (median ms; process CPU ms: ~{a.threads}x wall when "
          "the threads run in parallel):")
    for p in paths:
        w, c = np.median([x[0] for x in times[p]]), np.median([x[1] for x in times[p]])
        print(f"  wall {w * 1e3:8.2f}  cpu {c * 1e3:8.2f}  {p.parent.name}/{p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
