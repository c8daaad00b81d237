"""CTranslate2 (faster-whisper) Whisper model directory -> transformers `save_pretrained` directory.

A faster-whisper model directory holds `model.bin` (CTranslate2's binary format, spec
"WhisperSpec"), CTranslate2's `config.json` (suppress ids, alignment heads, language ids),
`tokenizer.json` (Hugging Face BPE) and `vocabulary.txt`. This writes what
WhisperForConditionalGeneration.from_pretrained and edgeseq read: config.json,
generation_config.json, preprocessor_config.json, tokenizer files, model.safetensors
(float32 unless --dtype says otherwise).

Weights map one to one, except that CTranslate2 fuses attention projections: self-attention
`linear_0` is [q; k; v] stacked on the output axis (3*d_model rows), cross-attention
`linear_0` is q and `linear_1` is [k; v]. Whisper's k_proj has no bias; CTranslate2 stores
zeros there, which are dropped (a non-zero one is refused: it is not a Whisper model).
Linear weights are [out, in] in both (torch's nn.Linear layout); convs [out, in, kernel].
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from .ct2_format import read_model_bin

FILES = ("model.bin", "config.json", "tokenizer.json")


def is_ct2_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file()


def _ln(v: dict, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]


def _linear(v: dict, src: str, dst: str, out: dict) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]


def _split(v: dict, src: str, dsts: list[str], out: dict, where: str) -> None:
    """A fused projection -> its parts, equal slices of the output (row) axis; k_proj loses its bias."""
    w, b = v[f"{src}/weight"], v[f"{src}/bias"]
    n = w.shape[0] // len(dsts)
    for i, dst in enumerate(dsts):
        out[f"{dst}.weight"] = w[i * n: (i + 1) * n]
        if dst.endswith("k_proj"):
            if np.any(b[i * n: (i + 1) * n]):
                raise InputError(f"{where}: {src} has a non-zero key bias; Whisper's k_proj has none")
        else:
            out[f"{dst}.bias"] = b[i * n: (i + 1) * n]


def _self_attention_and_ffn(v: dict[str, np.ndarray], s: str, d: str, out: dict[str, np.ndarray], where: str) -> None:
    """What encoder and decoder layers share: fused q/k/v self-attention (split into HF's three
    projections), its output projection and pre-norm, and the pre-norm feed-forward."""
    _split(v, f"{s}/self_attention/linear_0", [f"{d}.self_attn.{p}_proj" for p in "qkv"], out, where)
    _linear(v, f"{s}/self_attention/linear_1", f"{d}.self_attn.out_proj", out)
    _ln(v, f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm", out)
    _linear(v, f"{s}/ffn/linear_0", f"{d}.fc1", out)
    _linear(v, f"{s}/ffn/linear_1", f"{d}.fc2", out)
    _ln(v, f"{s}/ffn/layer_norm", f"{d}.final_layer_norm", out)


def _state_dict(v: dict[str, np.ndarray], where: str) -> tuple[dict[str, np.ndarray], dict]:
    """CTranslate2 WhisperSpec variables -> transformers' WhisperForConditionalGeneration names,
    and the dimensions read off the arrays."""
    def layers(prefix: str) -> int:
        return len({k.split("/")[1] for k in v if re.match(rf"{prefix}/layer_\d+/", k)})

    try:
        out: dict[str, np.ndarray] = {}
        for conv in ("conv1", "conv2"):
            _linear(v, f"encoder/{conv}", f"model.encoder.{conv}", out)
        out["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
        _ln(v, "encoder/layer_norm", "model.encoder.layer_norm", out)
        for i in range(layers("encoder")):
            s, d = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
            _self_attention_and_ffn(v, s, d, out, where)
        out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
        out["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
        _ln(v, "decoder/layer_norm", "model.decoder.layer_norm", out)
        for i in range(layers("decoder")):
            s, d = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
            _self_attention_and_ffn(v, s, d, out, where)
            _linear(v, f"{s}/attention/linear_0", f"{d}.encoder_attn.q_proj", out)
            _split(v, f"{s}/attention/linear_1", [f"{d}.encoder_attn.k_proj", f"{d}.encoder_attn.v_proj"], out, where)
            _linear(v, f"{s}/attention/linear_2", f"{d}.encoder_attn.out_proj", out)
            _ln(v, f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm", out)
        head = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])
        dims = dict(
            vocab_size=int(v["decoder/embeddings/weight"].shape[0]),
            d_model=int(out["model.encoder.conv1.weight"].shape[0]),
            num_mel_bins=int(out["model.encoder.conv1.weight"].shape[1]),
            encoder_layers=layers("encoder"), decoder_layers=layers("decoder"),
            encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
            encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
            decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
            max_source_positions=int(out["model.encoder.embed_positions.weight"].shape[0]),
            max_target_positions=int(out["model.decoder.embed_positions.weight"].shape[0]))
    except KeyError as e:
        raise InputError(f"{where}: not a CTranslate2 Whisper model: variable {e.args[0]!r} is missing") from None
    tied = np.array_equal(head, out["model.decoder.embed_tokens.weight"])
    if not tied:
        out["proj_out.weight"] = head
    return out, {**dims, "tie_word_embeddings": tied}


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    try:
        tok = json.loads(tokenizer_json.read_text())
        return {t["content"]: int(t["id"]) for t in tok["added_tokens"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{tokenizer_json}: not a Hugging Face tokenizer.json ({type(e).__name__})") from None


def convert_ct2_whisper(src: Path, out: Path, dtype: str = "float32", force: bool = False) -> Path:
    """Write a transformers checkpoint for the CTranslate2 Whisper model in `src` into `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    src, out = Path(src), Path(out)
    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be float32 or float16, got {dtype!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"{out}: exists and is not empty; pass --force to overwrite its files")
    for name in FILES:
        if not (src / name).is_file():
            raise InputError(f"{src}: not a CTranslate2 Whisper model directory (no {name})")
    spec, variables = read_model_bin(src / "model.bin")
    if spec != "WhisperSpec":
        raise InputError(f"{src / 'model.bin'}: a CTranslate2 {spec or 'unnamed'} model; only WhisperSpec converts")
    try:
        ct2 = json.loads((src / "config.json").read_text())
    except ValueError as e:
        raise InputError(f"{src / 'config.json'}: invalid JSON: {e}") from None
    state, dims = _state_dict(variables, str(src / "model.bin"))
    ids = _special_ids(src / "tokenizer.json")
    need = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|transcribe|>", "<|translate|>")
    missing = [t for t in need if t not in ids]
    if missing:
        raise InputError(f"{src / 'tokenizer.json'}: not a Whisper tokenizer (no {missing[0]})")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    multilingual = dims["vocab_size"] >= 51865  # Whisper's English-only vocabularies have 51864 tokens
    # Decoding settings live in generation_config.json only (transformers warns when the model
    # config carries them too).
    cfg = WhisperConfig(**dims, decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                        architectures=["WhisperForConditionalGeneration"])
    suppress = list(ct2.get("suppress_ids", []))
    begin_suppress = list(ct2.get("suppress_ids_begin", [220, eot]))
    id_to_token = {i: t for t, i in ids.items()}
    gen = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=dims["max_target_positions"], suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress, no_timestamps_token_id=ids["<|notimestamps|>"],
        alignment_heads=ct2.get("alignment_heads"), is_multilingual=multilingual, return_timestamps=False,
        max_initial_timestamp_index=50,
        # English-only Whisper: generate forces <|notimestamps|> after <|startoftranscript|>; a
        # multilingual one picks language and task (lang_to_id / task_to_id) at generate time.
        forced_decoder_ids=None if multilingual else [[1, ids["<|notimestamps|>"]]],
        **({"lang_to_id": {id_to_token[i]: i for i in ct2.get("lang_ids", []) if i in id_to_token},
            "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}}
           if multilingual else {}))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)).to(torch_dtype) for k, a in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    cfg.torch_dtype = dtype  # type: ignore[misc]  # typed read-only, has a setter
    cfg.save_pretrained(out)
    gen.save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(out)
    (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 1024,
        "add_prefix_space": False}, indent=2) + "\n")
    return out
