"""The input codecs, the eval-set rule, the strict loader and the typed manifest, without exports
(the commands that use them are covered by test_demo, test_probe, test_bad_input...)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
import pytest
from conftest import DEMO

from toolchain import audio, evalset, schema
from toolchain.errors import InputError
from toolchain.inputs import Context, codec_for, kinds
from toolchain.manifest import FORMAT_VERSION, parse
from toolchain.schema import AbsentIsNull, AtLeast, Keys, NonEmpty, Phrase, Rest

SETTINGS = {"kind": "log_mel", **audio.SETTINGS, "feature_size": 8, "n_fft": 64, "hop_length": 32,
            "sampling_rate": 1600, "chunk_length": 1, "n_samples": 1600, "frames": 50}


def test_codec_for_names_the_kinds():
    assert kinds() == ["log_mel", "text"]
    assert codec_for(None) is codec_for("text") and codec_for("log_mel").kind == "log_mel"
    for bad in ("image", "../text", "", 3):
        with pytest.raises(InputError, match="unknown input kind .*; this edgeseq reads: log_mel, text"):
            codec_for(bad)


def test_text_codec_reads_pads_and_probes():
    from toolchain.checkpoint import load_checkpoint
    from toolchain.manifest import Tokens

    tok = load_checkpoint(DEMO).load_tokenizer()
    codec, ctx = codec_for("text"), Context({"kind": "text"}, 24, lambda: tok)
    enc = codec.read("the 3rd of March, 2021", ctx)
    assert enc.arrays is None and enc.ids == tok.encode("the 3rd of March, 2021").ids
    ids, mask = codec.encode_arrays(enc, 24, 0)
    assert ids.shape == mask.shape == (1, 24) and mask.sum() == len(enc.ids)
    with pytest.raises(InputError, match="allows 24"):
        codec.read("x" * 40, ctx)
    assert len(codec.read("x" * 40, ctx, truncate=True).ids) == 24
    assert codec.calibration([{"input": "x" * 40}, {"input": "abc"}], ctx, None, 8) == [tok.encode("abc").ids]
    tokens = Tokens(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, vocab_size=40)
    probe = codec.probe_input(ctx, tokens, 10)
    assert len(probe.ids) == 10 and probe.ids[-1] == 1 and not {0, 1} & set(probe.ids[:-1])
    assert probe == codec.probe_input(ctx, tokens, 10)  # seeded
    assert codec.metric == "exact" and codec.padded and codec.describe({"kind": "text"}) is None


def test_log_mel_codec_reads_wav_and_synthetic(tmp_path):
    codec, ctx = codec_for("log_mel"), Context(SETTINGS, 24)
    wav = tmp_path / "a.wav"
    audio.write_wav(wav, audio.synthetic("tones", SETTINGS), SETTINGS["sampling_rate"])
    from_file = codec.read("a.wav", ctx, base=tmp_path)  # relative to the eval file's folder
    synthetic = codec.read("synthetic:tones", ctx)
    assert from_file.ids is None and from_file.arrays[0].shape == (1, 8, 50)
    assert np.abs(from_file.arrays[0] - synthetic.arrays[0]).max() < 1e-2  # 16-bit rounding only
    with pytest.raises(InputError, match="no such WAV file"):
        codec.read("missing.wav", ctx)
    audio.write_wav(wav, np.zeros(4000), SETTINGS["sampling_rate"])
    with pytest.raises(InputError, match="pass --truncate"):
        codec.read(str(wav), ctx)
    assert codec.read(str(wav), ctx, truncate=True).arrays[0].shape == (1, 8, 50)
    assert codec.probe_length(SETTINGS, 7) == 50 and codec.metric == "wer" and not codec.padded
    assert [r["input"] for r in codec.builtin_rows()] == [f"synthetic:{k}" for k in audio.SYNTHETIC]
    assert codec.calibration(codec.builtin_rows(), ctx, None, 2)[1][0].shape == (1, 8, 50)
    assert codec.encode_arrays(synthetic, 24, 0)[0] is synthetic.arrays[0]


def test_eval_set_fallback(tmp_path):
    text, speech = codec_for("text"), codec_for("log_mel")
    given = tmp_path / "e.jsonl"
    given.write_text('{"input": "a", "target": "b"}\n\n{"input": "c"}\n')
    s = evalset.choose(str(given), DEMO, text)
    assert s.rows == [{"input": "a", "target": "b"}, {"input": "c"}] and s.base == tmp_path
    s = evalset.choose(None, DEMO, text, limit=3)
    assert s.source == str(DEMO / "eval.jsonl") and len(s.rows) == 3 and s.base == DEMO
    assert evalset.choose(None, tmp_path, text).source == "built-in inputs"
    assert evalset.choose(None, tmp_path, speech).source == "built-in synthetic audio"
    assert evalset.eval_examples(None, tmp_path, 2, "log_mel")[0] == speech.builtin_rows()[:2]
    with pytest.raises(InputError, match="--limit must be >= 1"):
        evalset.choose(None, DEMO, text, limit=0)
    given.write_text('{"input": 3}\n')
    with pytest.raises(InputError, match=r'e.jsonl:1: each line must be an object with a string "input"'):
        evalset.choose(str(given), DEMO, text)


# -- the loader ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    n: Annotated[int, AtLeast(1)] = 1


@dataclass(frozen=True, kw_only=True)
class Spec:
    KIND: ClassVar[str] = "thing"

    names: Annotated[list[str], Phrase("a non-empty list of names"), NonEmpty(), AbsentIsNull()]
    inner: Inner = field(default_factory=Inner)
    sizes: Annotated[dict[str, float], Keys(("a", "b"), noun="size")] = field(default_factory=dict)
    maybe: int | None = None


@dataclass(frozen=True)
class Open:
    x: str
    more: Annotated[dict[str, Any], Rest()] = field(default_factory=dict)


@pytest.mark.parametrize("doc,message", [
    ({"names": ["a"], "inner": {"n": 2}, "sizes": {"a": 1}}, None),
    ({}, "W: thing key 'names' must be a non-empty list of names, got None"),
    ({"names": ["a", 1]}, "W: thing key 'names' must be a non-empty list of names, got ['a', 1]"),
    ({"names": ["a"], "inner": {"n": 0}}, "W: thing key 'inner.n' must be >= 1, got 0"),
    ({"names": ["a"], "inner": {"m": 0}}, "W: unknown inner key 'm'; allowed: n"),
    ({"names": ["a"], "sizes": {"c": 1}}, "W: unknown sizes size 'c'; allowed: a, b"),
    ({"names": ["a"], "sizes": {"a": "x"}}, "W: thing key 'sizes.a' must be a number, got 'x'"),
    ({"names": ["a"], "maybe": 1.5}, "W: thing key 'maybe' must be an integer, got 1.5"),
    ({"names": ["a"], "other": 1}, "W: unknown thing key 'other'; allowed: names, inner, sizes, maybe"),
    ([1], "W: a thing must be a YAML mapping, got list"),
])
def test_loader_wording(doc, message):
    if message is None:
        assert schema.load(Spec, doc, "W") == Spec(names=["a"], inner=Inner(2), sizes={"a": 1.0})
        return
    with pytest.raises(InputError) as e:
        schema.load(Spec, doc, "W")
    assert str(e.value) == message


def test_loader_keeps_the_rest_of_an_open_class():
    assert schema.load(Open, {"x": "a", "y": [1]}, "W") == Open("a", {"y": [1]})
    with pytest.raises(InputError, match="^W: missing key 'x'$"):
        schema.load(Open, {"y": 1}, "W")


# -- the typed manifest -------------------------------------------------------------------------


def _manifest() -> dict[str, Any]:
    from toolchain.specs import load_recipe, load_target

    sha = "0" * 64
    tensor = {"name": "input_ids", "shape": [1, 24], "dtype": "int64"}
    return {"format_version": FORMAT_VERSION, "created": "2026-01-01T00:00:00+00:00",
            "checkpoint": {"name": "ck", "path": "/ck", "family": "t5", "params": 10, "sha256": {"model": sha}},
            "recipe": load_recipe("fp32").to_dict(), "target": load_target("onnx-cpu").to_dict(),
            "programs": {"encode": {"file": "encode.onnx", "inputs": [tensor], "outputs": [], "opset": 17},
                         "decode": {"file": "decode.onnx", "data_file": "weights.data", "inputs": [], "outputs": [],
                                    "cache_mode": "io", "cache": []}},
            "input": {"kind": "text"},
            "tokens": {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "vocab_size": 40,
                       "tokenizer": "tokenizer.json", "decoder_prompt": [], "forced_eos_token_id": None},
            "onnx": {"encode": {"nodes": 3}},
            "sizes": {"model_bytes": 10, "fp32_param_bytes": 40, "ratio_to_fp32_params": 0.25},
            "files": {n: {"sha256": sha, "bytes": 1} for n in ("encode.onnx", "decode.onnx", "weights.data",
                                                                 "tokenizer.json")},
            "tool_versions": {"torch": "2"}, "export_seconds": 1.5, "verify": None}


def test_manifest_typed_view():
    m = parse(_manifest(), "M")
    assert m.programs["encode"].inputs[0].shape == (1, 24) and m.programs["encode"].facts == {"opset": 17}
    assert m.programs["decode"].cache_mode == "io" and m.reports == {"onnx": {"encode": {"nodes": 3}}}
    assert m.checkpoint.facts == {"family": "t5"} and m.tokens.decoding()["start_id"] == 0
    assert m.input.codec is codec_for("text") and m.recipe.name == "fp32" and m.files["weights.data"].bytes == 1
    old = _manifest()
    for key in ("input", "created", "sizes", "verify", "export_seconds", "tool_versions"):
        del old[key]
    old["format_version"] = 1
    del old["tokens"]["decoder_prompt"]
    assert parse(old, "M").input.kind == "text" and parse(old, "M").tokens.decoder_prompt == ()


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this tool"),
    (lambda m: m.pop("tokens"), "M: missing key 'tokens'"),
    (lambda m: m["tokens"].update(eos_token_id="1"), "M: 'tokens.eos_token_id' must be an integer"),
    (lambda m: m["tokens"].update(bos=1), "unknown tokens key 'bos'"),
    (lambda m: m["programs"]["encode"]["inputs"][0].update(shape="1x24"),
     "M: 'programs.encode.inputs[0].shape' must be a list of integers"),
    (lambda m: m["programs"]["decode"].update(data_file="../w"), "data_file '../w' is not a file listed"),
    (lambda m: m.update(input={"kind": "image"}), "M: 'input.kind': unknown input kind 'image'"),
    (lambda m: m.update(input={"kind": "log_mel", **{k: v for k, v in SETTINGS.items() if k != "frames"}}),
     "M: missing key 'input.frames'"),
    (lambda m: m.update(input={"kind": "text", "n_mels": 80}), "M: unknown input key 'n_mels'"),
    (lambda m: m["recipe"].update(max_input_len=0), "M: recipe key 'max_input_len' must be between 1 and 8192"),
    (lambda m: m["files"]["weights.data"].update(bytes=-1), "M: 'files' entry 'weights.data' needs a sha256"),
])
def test_manifest_refusals_are_one_line(change, message):
    m = copy.deepcopy(_manifest())
    change(m)
    with pytest.raises(InputError) as e:
        parse(m, "M")
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
