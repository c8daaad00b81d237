"""Other tools' own exports of the same checkpoint, run inside their own venvs (compare.py
creates them through `make bench-peers`; their transformers pins conflict with ours).

    <peer venv>/bin/python benchmarks/peers.py export optimum-onnx CHECKPOINT OUT_DIR
    <peer venv>/bin/python benchmarks/peers.py export optimum-executorch CHECKPOINT OUT_DIR INPUT_LEN
    <peer venv>/bin/python benchmarks/peers.py export ctranslate2 CHECKPOINT OUT_DIR

optimum-onnx: `ORTModelForSeq2SeqLM.from_pretrained(ckpt, export=True)` (encoder, decoder,
decoder-with-past ONNX files) into OUT/fp32, and optimum's documented dynamic int8
quantization (`ORTQuantizer` + `AutoQuantizationConfig.avx2(is_static=False)`) of each file
into OUT/int8. Run with `ORTModelForSeq2SeqLM.generate` on 2 intra-op threads, the
session options edgeseq's onnx-cpu target uses.

optimum-executorch: `main_export(task="text2text-generation", recipe="xnnpack")` into
OUT/model.pte (methods `encoder` and `text_decoder`), with static shapes at INPUT_LEN (see
export_optimum_executorch for why: the released version cannot export T5). Run with its
`ExecuTorchModelForSeq2SeqLM.forward`, one call per token as its `generate` does (which
cannot force a length, so the loop is repeated here with EOS suppressed). Version 1.1.0
applies no quantization to text2text-generation, so it has an fp32 row only.

ctranslate2: CTranslate2's own converter (`TransformersConverter`, what ct2-transformers-converter
runs) into OUT/float32 (no quantization) and OUT/int8 (`quantization="int8"`), each loaded with
that compute type (on x86 without float16 support int8 runs as int8 weights x float32
activations: `int8_float32`). Run with `Translator.generate_tokens` (greedy, min = max decoding
length: forced length), 2 intra-op threads; each yielded token is timestamped.

Each export writes info.json ({export_seconds, model_bytes, versions}).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import generate_once, input_ids, stamping_processor  # noqa: E402


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import version

    return {n: version(n) for n in names}


def _info(out: Path, t0: float, files: list[Path], **extra) -> dict:
    info = {"export_seconds": round(time.time() - t0, 1), "model_bytes": sum(f.stat().st_size for f in files),
            "files": sorted(f.name for f in files), **extra}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


def export_optimum_onnx(ckpt: Path, out: Path) -> None:
    from optimum.onnxruntime import ORTModelForSeq2SeqLM, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    versions = _versions("optimum-onnx", "optimum", "onnxruntime", "transformers", "torch")
    fp32, int8 = out / "fp32", out / "int8"
    t0 = time.time()
    model = ORTModelForSeq2SeqLM.from_pretrained(ckpt, export=True, local_files_only=True)
    model.save_pretrained(fp32)
    files = [p for p in fp32.iterdir() if p.suffix in (".onnx", ".onnx_data") or p.name.endswith(".onnx.data")]
    exported = time.time() - t0
    _info(fp32, t0, files, versions=versions)
    t1 = time.time()
    qconfig = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    for f in sorted(fp32.glob("*.onnx")):
        ORTQuantizer.from_pretrained(fp32, file_name=f.name).quantize(save_dir=int8, quantization_config=qconfig)
    for f in fp32.iterdir():  # config, generation config, tokenizer: what from_pretrained needs
        if f.suffix == ".json" and not (int8 / f.name).exists():
            (int8 / f.name).write_bytes(f.read_bytes())
    qfiles = list(int8.glob("*_quantized.onnx"))
    info = _info(int8, t1, qfiles, versions=versions)
    info["export_seconds"] = round(exported + info["export_seconds"], 1)  # export + quantize
    (int8 / "info.json").write_text(json.dumps(info, indent=1))


def export_optimum_executorch(ckpt: Path, out: Path, input_len: int) -> None:
    """optimum-executorch 1.1.0 cannot export T5 as released: its decoder marks the encoder length
    dynamic while transformers 5's T5 slices the cross-attention mask to the static cache length,
    so torch.export fails ("size of tensor a (1024) must match ... s96"; fixed on its main branch
    by huggingface/optimum-executorch#240, not released). The workaround of the open fix
    (huggingface/optimum-executorch#230): static shapes, the encoder length fixed at `input_len`
    and the cache length (self and cross, one setting) equal to it, so no cross slot is padding."""
    import torch
    from optimum.exporters.executorch import main_export

    real = torch.export.export

    def static_export(mod, args, *a, dynamic_shapes=None, **kw):
        return real(mod, args, *a, dynamic_shapes=None, **kw)

    from optimum.exporters.executorch import integrations

    base = integrations.Seq2SeqLMExportableModule.export

    def export_at_length(self, encoder_input_ids=None, *a, **kw):
        if encoder_input_ids is None:
            encoder_input_ids = torch.ones((1, input_len), dtype=torch.long)
        return base(self, encoder_input_ids, *a, **kw)

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    torch.export.export, integrations.Seq2SeqLMExportableModule.export = static_export, export_at_length
    try:
        main_export(model_name_or_path=str(ckpt), task="text2text-generation", recipe="xnnpack", output_dir=out,
                    local_files_only=True, max_seq_len=input_len)
    finally:
        torch.export.export, integrations.Seq2SeqLMExportableModule.export = real, base
    for f in ckpt.glob("*.json"):  # config.json etc., for from_pretrained
        if not (out / f.name).exists():
            (out / f.name).write_bytes(f.read_bytes())
    files = [p for p in out.iterdir() if p.suffix in (".pte", ".ptd")]
    _info(out, t0, files, input_len=input_len, patched="static shapes (huggingface/optimum-executorch#230)",
          versions=_versions("optimum-executorch", "executorch", "transformers", "torch"))


def export_ctranslate2(ckpt: Path, out: Path) -> None:
    from ctranslate2.converters import TransformersConverter

    versions = _versions("ctranslate2", "transformers", "torch")
    cfg = json.loads((ckpt / "config.json").read_text())
    # The converter reads the vocabulary through transformers 4's AutoTokenizer, which does not know
    # the tokenizer class transformers 5 writes ("TokenizersBackend"): the same checkpoint, staged with
    # links, and the tokenizer.json read as a PreTrainedTokenizerFast.
    src = out / "source"
    src.mkdir(parents=True, exist_ok=True)
    for f in ckpt.iterdir():
        if f.name != "tokenizer_config.json" and not (src / f.name).exists():
            (src / f.name).symlink_to(f.resolve())
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text()) if (ckpt / "tokenizer_config.json").is_file() else {}
    (src / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "tokenizer_class": "PreTrainedTokenizerFast"}))
    for sub, quantization in (("float32", None), ("int8", "int8")):
        t0 = time.time()
        TransformersConverter(str(src)).convert(str(out / sub), quantization=quantization, force=True)
        _info(out / sub, t0, [out / sub / "model.bin"], versions=versions, quantization=quantization or "none",
              vocab_size=cfg["vocab_size"], eos_token_id=cfg["eos_token_id"])


class CTranslate2Runner:
    """ctranslate2.Translator.generate_tokens on the converted model, greedy, forced length. The
    input is the same ids as every other row's, given as the converted vocabulary's tokens."""

    def __init__(self, path: Path, input_len: int, output_len: int, threads: int = 2):
        import ctranslate2

        self.info = json.loads((path / "info.json").read_text())
        self.translator = ctranslate2.Translator(str(path), device="cpu", compute_type=path.name,
                                                 intra_threads=threads, inter_threads=1)
        vocab = json.loads((path / "shared_vocabulary.json").read_text())
        ids = input_ids(self.info["vocab_size"], input_len, self.info["eos_token_id"])
        self.source = [vocab[i] for i in ids]
        first = {}
        for i, tok in enumerate(vocab):
            first.setdefault(tok, i)
        if [first[t] for t in self.source] != ids:  # a token spelled twice would change the input
            raise ValueError("the converted vocabulary does not map the input ids back to themselves")
        self.T, self.mb = output_len, self.info["model_bytes"] / 1e6
        self.compute_type = self.translator.compute_type

    def once(self) -> tuple[float, list[float]]:
        stamps = [time.perf_counter()]
        for _ in self.translator.generate_tokens(self.source, max_decoding_length=self.T,
                                                 min_decoding_length=self.T):
            stamps.append(time.perf_counter())
        return stamps[1] - stamps[0], [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]


class OptimumOnnxRunner:
    """optimum's ORTModelForSeq2SeqLM.generate (greedy, forced length)."""

    def __init__(self, path: Path, input_len: int, output_len: int, threads: int = 2):
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        from transformers import AutoConfig

        torch.set_num_threads(threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.info = json.loads((path / "info.json").read_text())
        names = {}
        if path.name == "int8":
            names = dict(encoder_file_name="encoder_model_quantized.onnx",
                         decoder_file_name="decoder_model_quantized.onnx",
                         decoder_with_past_file_name="decoder_with_past_model_quantized.onnx")
        self.model = ORTModelForSeq2SeqLM.from_pretrained(path, session_options=opts, use_merged=False,
                                                          local_files_only=True, **names)
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        self.ids = torch.tensor([input_ids(cfg.vocab_size, input_len, cfg.eos_token_id)])
        self.T, self.mb = output_len, self.info["model_bytes"] / 1e6
        self.processor, self.stamps = stamping_processor()

    def once(self) -> tuple[float, list[float]]:
        return generate_once(self.model, self.ids, self.T, self.processor, self.stamps)


class OptimumExecuTorchRunner:
    """optimum-executorch's ExecuTorchModelForSeq2SeqLM: `forward` once per token (encoder on the
    first call, then `text_decoder` with the encoder states every step), greedy, EOS suppressed."""

    def __init__(self, path: Path, input_len: int, output_len: int, threads: int = 2):
        import torch
        from executorch.extension.pybindings import portable_lib
        from optimum.executorch import ExecuTorchModelForSeq2SeqLM
        from transformers import AutoConfig

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        self.info = json.loads((path / "info.json").read_text())
        self.model = ExecuTorchModelForSeq2SeqLM.from_pretrained(path, local_files_only=True)
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        self.eos = cfg.eos_token_id
        self.ids = torch.tensor([input_ids(cfg.vocab_size, input_len, cfg.eos_token_id)])
        self.T, self.mb, self.torch = output_len, self.info["model_bytes"] / 1e6, torch

    def once(self) -> tuple[float, list[float]]:
        torch, m = self.torch, self.model
        token, enc, stamps = m.decoder_start_token_id, None, [time.perf_counter()]
        for i in range(self.T):
            logits, enc = m.forward(self.ids, torch.tensor([[token]], dtype=torch.long),
                                    torch.tensor([i], dtype=torch.long), enc)
            row = logits[0, -1].clone()
            row[self.eos] = -float("inf")
            token = int(row.argmax())
            stamps.append(time.perf_counter())
        return stamps[1] - stamps[0], [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]


def main() -> int:
    if len(sys.argv) not in (5, 6) or sys.argv[1] != "export":
        print(__doc__, file=sys.stderr)
        return 2
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    peer, ckpt, out = sys.argv[2], Path(sys.argv[3]).resolve(), Path(sys.argv[4])
    if peer == "optimum-onnx":
        export_optimum_onnx(ckpt, out)
    elif peer == "ctranslate2":
        export_ctranslate2(ckpt, out)
    else:
        export_optimum_executorch(ckpt, out, int(sys.argv[5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
