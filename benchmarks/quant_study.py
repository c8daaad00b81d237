"""Which weights cost a real checkpoint its task accuracy under int8 / int4: a per-component and
per-layer quantization study on eager PyTorch (the split's modules quantized by torchao exactly as
the executorch-xnnpack backend quantizes them before lowering), scored with the same task metric
`verify` uses (WER for speech, chrF for translation, exact match for the rest).

Usage (Whisper tiny.en, `make whisper-tiny` first):
    python benchmarks/quant_study.py build/whisper-tiny.en --eval demo/speech/eval.jsonl \
        --max-output-len 64 --json build/quant-study.json

Each row quantizes a set of weights ("component[/regex]" -> scheme, first match wins) and runs the
greedy loop (generate.greedy with the family's prompt and suppression, as run/verify) on every row
of the eval set. These are eager-PyTorch numbers (torchao's reference kernels): the lowered XNNPACK
programs compute the same quantization grid but may round differently, so the shipped recipes are
confirmed by real exports and `edgeseq verify`, not by this table.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from toolchain import metrics  # noqa: E402
from toolchain.backends.executorch import quantize as etq  # noqa: E402
from toolchain.calibrate import EagerSession  # noqa: E402
from toolchain.checkpoint import load_checkpoint  # noqa: E402
from toolchain.export import build_parts, input_spec  # noqa: E402
from toolchain.generate import greedy  # noqa: E402
from toolchain.inputs import Context, codec_for  # noqa: E402
from toolchain.schemes import Component, QuantScheme  # noqa: E402
from toolchain.specs import load_recipe, with_lengths  # noqa: E402

W8, W4 = QuantScheme.W8A8_DYNAMIC, QuantScheme.W4A8_DYNAMIC
E8, E4 = QuantScheme.INT8_WEIGHT, QuantScheme.INT4_WEIGHT
ENC, DEC, EMB, HEAD = Component.ENCODER, Component.DECODER, Component.EMBEDDINGS, Component.LM_HEAD

# (label, [(component, name regex or None, scheme)]): the first rule matching a weight decides.
INT8 = [(ENC, None, W8), (DEC, None, W8), (EMB, None, E8), (HEAD, None, W8)]


def study_rows(enc_layers: int, dec_layers: int) -> list[tuple[str, list]]:
    mixed = [(ENC, None, W8), (DEC, None, W4), (EMB, None, E8), (HEAD, None, W8)]
    int4 = [(ENC, None, W4), (DEC, None, W4), (EMB, None, E8), (HEAD, None, W8)]
    rows: list[tuple[str, list]] = [("fp32", []), ("int8 (8da8w linears, int8 embeddings)", INT8),
                                    ("mixed (enc 8da8w, dec 8da4w)", mixed), ("int4 (enc+dec 8da4w)", int4)]
    # One component at a time (the rest fp32): 4-bit first (where the loss is), then 8-bit.
    rows += [(f"{c.value} only 8da4w" if c != EMB else "embeddings only int4", [(c, None, s)])
             for c, s in ((ENC, W4), (DEC, W4), (EMB, E4), (HEAD, W4))]
    rows += [(f"{c.value} only 8da8w" if c != EMB else "embeddings only int8", [(c, None, s)])
             for c, s in ((ENC, W8), (DEC, W8), (EMB, E8), (HEAD, W8))]
    # Within the encoder / decoder: one layer (or one kind of weight) at 4 bits.
    rows += [(f"encoder layer {i} only 8da4w", [(ENC, rf"^encode\.layers\.{i}\.", W4)]) for i in range(enc_layers)]
    rows += [("encoder cross K/V only 8da4w", [(ENC, r"\.cross_", W4)]),
             ("encoder attention only 8da4w", [(ENC, r"^encode\.layers\.\d+\.attn\.", W4)]),
             ("encoder MLP only 8da4w", [(ENC, r"^encode\.layers\.\d+\.ff\.", W4)])]
    rows += [(f"decoder layer {i} only 8da4w", [(DEC, rf"^decode\.layers\.{i}\.", W4)]) for i in range(dec_layers)]
    return rows


def _per_token_int8(x: torch.Tensor) -> torch.Tensor:
    """Dynamic activation quantization as 8da* does it: int8, asymmetric, one scale and zero point
    per token (row of the last dim), quantized then dequantized."""
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=torch.finfo(torch.float32).eps)
    zp = (-128 - torch.round(lo / scale)).clamp(-128, 127)
    return (torch.clamp(torch.round(x / scale) + zp, -128, 127) - zp) * scale


def _fake_quantize(module, scheme: QuantScheme, group_size: int) -> None:
    """The module's weight replaced by torchao's own quantized-then-dequantized weight (the exact
    grid the backend stores), and for 8da* the dynamic per-token int8 activation grid on its input.
    Plain fp32 kernels then run the quantized numerics ~100x faster than torchao's eager fallback."""
    from torchao.quantization import quantize_

    quantize_(module, etq._config(scheme, group_size), filter_fn=lambda m, fqn, mod=module: m is mod)
    module.weight = torch.nn.Parameter(module.weight.dequantize().float(), requires_grad=False)
    if scheme in (W8, W4):
        module.register_forward_pre_hook(lambda _m, args: (_per_token_int8(args[0]), *args[1:]))


def quantize(parts, rules, group_size: int) -> dict[str, str]:
    """Apply `rules` to the split's weights; returns module name -> scheme for what was quantized."""
    if any(c in (HEAD, EMB) for c, _, _ in rules):
        etq._untie_head(parts)
    chosen: dict[str, str] = {}
    for comp, mods in etq.components(parts).items():
        for name, module in mods:
            for c, pattern, scheme in rules:
                if c == comp and (pattern is None or re.search(pattern, name)):
                    _fake_quantize(module, scheme, group_size)
                    chosen[name] = scheme.value
                    break
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--eval", required=True, help="eval JSONL (input, target)")
    ap.add_argument("--max-output-len", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--only", default="", help="regex: run only rows whose label matches")
    ap.add_argument("--limit", type=int, default=0, help="first N eval rows only (0: all)")
    ap.add_argument("--json", help="write the rows as JSON here")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)

    source = load_checkpoint(args.checkpoint)
    recipe = with_lengths(load_recipe("fp32"), max_output_len=args.max_output_len)
    model = source.load_model()
    parts = build_parts(source, recipe, model)
    spec = input_spec(source, parts)
    codec = codec_for(spec["kind"])
    tok = source.load_tokenizer()
    data = [json.loads(line) for line in Path(args.eval).read_text().splitlines() if line.strip()]
    if args.limit:
        data = data[: args.limit]
    ctx = Context(spec, recipe.max_input_len, source.load_tokenizer)
    base = Path(args.eval).parent
    feats = [codec.read(r["input"], ctx, base=base).arrays for r in data]
    refs = [r["target"] for r in data]
    metric = codec.metric
    norm, _ = metrics.normalizer(Path(args.checkpoint))

    enc_layers = len(parts.encode.layers)
    dec_layers = len(parts.decode.layers)
    out = []
    fp32_tokens = None
    for label, rules in study_rows(enc_layers, dec_layers):
        if args.only and not re.search(args.only, label) and label != "fp32":
            continue
        parts = build_parts(source, recipe, source.load_model())
        chosen = quantize(parts, rules, args.group_size)
        session = EagerSession(parts)
        kw = {"max_input_len": parts.max_input_len, "max_output_len": parts.max_output_len,
              "start_id": parts.decoder_start_token_id, "eos_id": parts.eos_token_id, "pad_id": parts.pad_token_id,
              "prompt": list(parts.decoder_prompt), "language_ids": list(parts.language_token_ids),
              "suppress": list(parts.suppress_tokens), "begin_suppress": list(parts.begin_suppress_tokens)}
        t0 = time.time()
        tokens = [greedy(session, None, inputs=codec.encode_arrays(f, parts.max_input_len, parts.pad_token_id),
                         **kw).tokens for f in feats]
        hyps = [tok.decode(t) for t in tokens]
        s = metrics.scores(metric, hyps, refs, norm)
        if fp32_tokens is None:
            fp32_tokens = tokens
        match = sum(a == b for a, b in zip(tokens, fp32_tokens, strict=True)) / len(tokens)
        row = {"label": label, "weights": len(chosen), **{k: round(v * 100, 2) for k, v in s.items()},
               "sequence_match_vs_fp32": round(match, 3), "seconds": round(time.time() - t0, 1)}
        out.append(row)
        print(json.dumps(row), flush=True)
    meta = {"checkpoint": str(args.checkpoint), "eval": args.eval, "rows": len(data), "metric": metric,
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
