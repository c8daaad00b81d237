"""Every family through every target: T5, BART, mBART, Marian, Whisper (audio) and T5Gemma (RoPE).

Tiny random checkpoints (written here with save_pretrained, fixed seeds, a few training
steps so greedy outputs vary) go through:
  * the eager split vs transformers (logits and tokens, both cache modes),
  * the family x target matrix: a real export per cell, then verify (parity per runtime:
    sequence_match 1.0 and logits within the recipe's tolerance) where the runtime runs
    here, a structure check where it cannot (Core ML off macOS, whose refusal to execute is
    asserted too). Each cell's result is recorded; a complete run writes them as JSON
    (``$EDGESEQ_SUPPORT_JSON``, default build/support-matrix.json) for
    ``scripts/support_table.py``, which renders the README's support table;
  * Whisper specifics: numpy log-mel == WhisperFeatureExtractor, the decoder prompt ==
    what WhisperForConditionalGeneration.generate forces, and a generated WAV file
    transcribed by `edgeseq run` to eager generate's tokens.
Artifacts are exported once per session (a cell is ~5-40 s on 2 shared cores).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import time
import wave
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from toolchain import audio, backends
from toolchain.calibrate import EagerSession
from toolchain.checkpoint import load_checkpoint
from toolchain.errors import InputError
from toolchain.generate import greedy

from helpers import ROOT, reference

pytestmark = pytest.mark.slow  # trains and exports every family to every target

S, T = 24, 12  # the small recipe's lengths
# Family row -> (model_type, tiny_config variant, config overrides, seed, training steps). One
# layer per stack (T5Gemma's is a sliding-window layer, whose window of 4 is shorter than both
# lengths; test_t5gemma_layer_types covers 2+2 layers of both types). Seeds and steps are ones
# whose greedy outputs are not one repeated token; mBART learns a single token from a few
# steps, so it is left untrained with a wide init.
FAMILIES = {
    "t5": ("t5", "v1.1", dict(num_layers=1, num_decoder_layers=1), 22, 25),
    "bart": ("bart", "bart", dict(encoder_layers=1, decoder_layers=1), 20, 25),
    "mbart": ("mbart", "mbart", dict(encoder_layers=1, decoder_layers=1, init_std=1.0), 21, 0),
    "marian": ("marian", "marian", dict(encoder_layers=1, decoder_layers=1), 22, 25),
    "whisper": ("whisper", "whisper", dict(decoder_layers=1), 0, 12),
    "t5gemma": ("t5gemma", "t5gemma", dict(module=dict(num_hidden_layers=1, layer_types=["sliding_attention"])),
                20, 25),
}
MBART_LANGUAGE = 3  # mBART's forced BOS: the target language code (here any token id)
TARGETS = ["executorch-xnnpack", "litert-cpu", "onnx-cpu", "coreml-cpu"]
# Cells a runtime cannot do: (family, target) -> the one-line error export must give. None today.
UNSUPPORTED: dict[tuple[str, str], str] = {}
SUPPORT_JSON = Path(os.environ.get("EDGESEQ_SUPPORT_JSON", ROOT / "build" / "support-matrix.json"))

# -- tiny Whisper ----------------------------------------------------------------------------

WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|transcribe|>",
                    "<|translate|>", "<unk>"]
FE_ARGS = dict(feature_size=8, sampling_rate=16000, hop_length=160, chunk_length=1, n_fft=400)


def _whisper_tokenizer():
    """Whisper's special tokens plus the demo's characters; <|notimestamps|> last, because
    generate reads every id above it as a timestamp."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from toolchain.demo.dates import ALPHABET

    vocab = {t: i for i, t in enumerate(WHISPER_SPECIALS)}
    for ch in ALPHABET:
        vocab.setdefault(ch, len(vocab))
    vocab["<|notimestamps|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens(WHISPER_SPECIALS + ["<|notimestamps|>"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _settings() -> dict:
    n = FE_ARGS["chunk_length"] * FE_ARGS["sampling_rate"]
    return {"kind": "log_mel", **audio.SETTINGS, **FE_ARGS, "n_samples": n, "frames": n // FE_ARGS["hop_length"]}


def _whisper_generation(v: dict[str, int], language: str | None = "en", **extra):
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=v["<|startoftranscript|>"], eos_token_id=0, pad_token_id=0, bos_token_id=0,
        lang_to_id={"<|en|>": v["<|en|>"], "<|de|>": v["<|de|>"]},
        task_to_id={"transcribe": v["<|transcribe|>"], "translate": v["<|translate|>"]},
        no_timestamps_token_id=v["<|notimestamps|>"], is_multilingual=True, language=language,
        task="transcribe" if language else None, suppress_tokens=[v["<unk>"]], begin_suppress_tokens=[0, v[" "]],
        **extra)


def tiny_whisper(out: Path, seed: int = 0, train_steps: int = 12, language: str | None = "en", **overrides) -> Path:
    """A tiny Whisper (8 mel bins, 1 s of 16 kHz audio) trained a few steps on synthetic signals
    labelled with text, with a multilingual generation config (language, task, suppression)."""
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from tiny_configs import tiny_config

    tok = _whisper_tokenizer()
    v = tok.get_vocab()
    cfg = tiny_config("whisper", "whisper", vocab_size=tok.get_vocab_size(), **overrides)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    settings, rng = _settings(), np.random.default_rng(seed)
    prefix = [v["<|en|>"], v["<|transcribe|>"], v["<|notimestamps|>"]]
    words = ["a rising chirp", "two tones", "noise"]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        feats, labels = [], []
        for _ in range(8):
            i = int(rng.integers(3))
            x = audio.synthetic(audio.SYNTHETIC[i], settings, seconds=float(rng.uniform(0.3, 1.0)))
            feats.append(audio.log_mel(x * float(rng.uniform(0.3, 1.5)), settings)[0])
            labels.append(prefix + tok.encode(f"{words[i]} {int(rng.integers(100))}").ids + [0])
        lab = torch.full((8, max(map(len, labels))), -100)
        for j, row in enumerate(labels):
            lab[j, : len(row)] = torch.tensor(row)
        model(input_features=torch.from_numpy(np.stack(feats)), labels=lab).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config = _whisper_generation(v, language)
    model.save_pretrained(out)
    WhisperFeatureExtractor(**FE_ARGS).save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            unk_token="<unk>").save_pretrained(out)
    return out


def _checkpoint(base: Path, family: str) -> Path:
    from transformers import GenerationConfig

    from helpers import tiny_checkpoint

    model_type, variant, overrides, seed, steps = FAMILIES[family]
    if family == "whisper":
        return tiny_whisper(base / family, seed=seed, train_steps=steps, **overrides)
    out = tiny_checkpoint(base / family, model_type, variant, seed=seed, train_steps=steps, **overrides)
    if family == "mbart":  # generation config: forced BOS = target language
        gen = GenerationConfig.from_pretrained(out)
        gen.forced_bos_token_id = MBART_LANGUAGE
        gen.save_pretrained(out)
    return out


@contextlib.contextmanager
def _one_thread():
    """Tiny training steps run ~3x faster on one torch thread than on two busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("families")
    with _one_thread():
        return {f: _checkpoint(base, f) for f in FAMILIES}


# -- eager split ------------------------------------------------------------------------------


def _decoding(parts) -> dict:
    return {"start_id": parts.decoder_start_token_id, "eos_id": parts.eos_token_id, "pad_id": parts.pad_token_id,
            "prompt": parts.decoder_prompt, "language_ids": parts.language_token_ids,
            "suppress": parts.suppress_tokens, "begin_suppress": parts.begin_suppress_tokens,
            "forced_eos": parts.forced_eos_token_id}


def _text_split_parity(ck: Path, family: str) -> None:
    src = load_checkpoint(ck)
    model = src.load_model()
    for cache_mode in ("buffer", "slot", "io"):
        parts = src.adapter.build(model, S, T, cache_mode)
        for length in (5, S):
            rng = np.random.default_rng(length)
            ids = [int(x) for x in rng.integers(3, 40, size=length - 1)] + [1]
            ref_tokens, ref_logits = reference(model, ids, T)
            gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, keep_logits=True,
                         force_length=True, **_decoding(parts))
            assert_allclose(np.stack(gen.logits), ref_logits, atol=parts.tolerance["eager"], rtol=1e-4,
                            err_msg=f"{family} {cache_mode} len={length}")
            assert gen.prompt + gen.tokens == ref_tokens, (family, cache_mode, length)
            assert len(set(ref_tokens)) >= 2, "model too flat to test token equality"
    if family == "mbart":  # the forced BOS (a language code) is the decoder prompt
        assert parts.decoder_prompt == [MBART_LANGUAGE] and ref_tokens[0] == MBART_LANGUAGE


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "whisper"])
def test_text_split_matches_transformers(family_checkpoints, family):
    _text_split_parity(family_checkpoints[family], family)


def test_text_generation_config_is_honoured(family_checkpoints):
    """forced_bos / forced_eos / suppress_tokens / begin_suppress_tokens of a text model's generation
    config: greedy over the split gives transformers' generate tokens (not forced to full length)."""
    src = load_checkpoint(family_checkpoints["bart"])
    model = src.load_model()
    gen_cfg = model.generation_config
    first = reference(model, [5, 6, 7, 1], T)[0][0]
    # EOS (1) suppressed, so every run reaches the length limit, where token 2 is forced.
    gen_cfg.forced_bos_token_id, gen_cfg.forced_eos_token_id = 4, 2
    gen_cfg.suppress_tokens, gen_cfg.begin_suppress_tokens = [1], [first]
    parts = src.adapter.build(model, S, T, "buffer")
    assert parts.decoder_prompt == [4] and parts.forced_eos_token_id == 2
    for length in (4, 9):
        rng = np.random.default_rng(length)
        ids = [int(x) for x in rng.integers(3, 40, size=length - 1)] + [1]
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=T, do_sample=False)[0, 1:].tolist()
        gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, **_decoding(parts))
        assert gen.prompt + gen.tokens == ref, (length, gen.prompt + gen.tokens, ref)
        assert len(ref) == T and ref[0] == 4 and ref[-1] == 2 and ref[1] != first and 1 not in ref


def test_t5gemma_layer_types(tmp_path):
    """2+2 layers: a sliding-window (bidirectional in the encoder, causal in the decoder) and a
    full-attention layer per stack, GQA and both soft-caps, against transformers."""
    from helpers import tiny_checkpoint

    with _one_thread():
        ck = tiny_checkpoint(tmp_path / "t5gemma", "t5gemma", "t5gemma", seed=20, train_steps=25)
    assert load_checkpoint(ck).load_model().config.decoder.layer_types == ["sliding_attention", "full_attention"]
    _text_split_parity(ck, "t5gemma")


@pytest.mark.parametrize("language", ["en", None])  # None: the language is detected from the first step
def test_whisper_split_matches_generate(tmp_path, language):
    with _one_thread():
        ck = tiny_whisper(tmp_path / "w", seed=5, train_steps=12, language=language, decoder_layers=2)
    src = load_checkpoint(ck)
    model = src.load_model()
    settings = _settings()
    for cache_mode in ("buffer", "slot", "io"):
        parts = src.adapter.build(model, S, 16, cache_mode)
        assert parts.encode_input_names() == ["input_features"] and not parts.cross_bias
        for kind in audio.SYNTHETIC:
            feats = audio.log_mel(audio.synthetic(kind, settings), settings)
            gen = greedy(EagerSession(parts), None, inputs=(feats,), max_input_len=S, max_output_len=16,
                         keep_logits=True, **_decoding(parts))
            with torch.no_grad():
                x = torch.from_numpy(feats)
                ref = model.generate(input_features=x, max_new_tokens=16 - len(parts.decoder_prompt))[0].tolist()
                fed = [parts.decoder_start_token_id, *gen.prompt, *gen.tokens][: len(gen.logits)]
                eager = model(input_features=x, decoder_input_ids=torch.tensor([fed])).logits[0].numpy()
            assert_allclose(np.stack(gen.logits), eager, atol=parts.tolerance["eager"], rtol=1e-4)
            assert gen.tokens == (ref[: ref.index(0)] if 0 in ref else ref), (language, cache_mode, kind)
            assert len(set(gen.tokens)) >= 2
            if language is None:
                detected = model.detect_language(input_features=x).item()
                assert gen.prompt[0] == detected


def test_whisper_prompt_matches_generate(family_checkpoints):
    """The adapter's static prompt == WhisperForConditionalGeneration's init tokens, per generation config."""
    from toolchain.arch.whisper import decoder_prompt

    model = load_checkpoint(family_checkpoints["whisper"]).load_model()
    v = _whisper_tokenizer().get_vocab()
    x = torch.zeros(1, 8, 100)
    translate = _whisper_generation(v, "en")
    translate.task = "translate"
    english_only = _whisper_generation(v, None)
    for key in ("lang_to_id", "task_to_id", "is_multilingual"):
        delattr(english_only, key)
    cases = [_whisper_generation(v, "en"), _whisper_generation(v, "german"), _whisper_generation(v, "<|de|>"),
             translate, english_only,
             _whisper_generation(v, None, forced_decoder_ids=[[1, v["<|en|>"]], [2, v["<|translate|>"]]]),
             # language left open: generate detects it (the prompt says None there)
             _whisper_generation(v, None, forced_decoder_ids=[[1, None], [2, v["<|transcribe|>"]]]),
             _whisper_generation(v, None)]
    for gen in cases:
        prompt, languages = decoder_prompt(gen, model.config)
        gen.return_timestamps = False  # generate sets it before it builds the init tokens
        init = model._retrieve_init_tokens(x, batch_size=1, generation_config=gen, config=model.config,
                                           num_segment_frames=100, kwargs={})[0].tolist()
        if None in prompt:
            assert prompt.index(None) == 0 and init[1] in languages
            prompt = [init[1], *prompt[1:]]
        assert [gen.decoder_start_token_id, *prompt] == init, (gen.language, gen.task, init)
    gen = _whisper_generation(v, "en", return_timestamps=True)
    with pytest.raises(InputError, match="return_timestamps"):
        decoder_prompt(gen, model.config)


def test_log_mel_matches_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    for kw in (FE_ARGS, dict(feature_size=80), dict(feature_size=128)):
        fe = WhisperFeatureExtractor(**kw)
        s = {"kind": "log_mel", **{k: getattr(fe, k) for k in audio.SETTINGS}, "n_samples": fe.n_samples,
             "frames": fe.nb_max_frames}
        assert_allclose(audio.mel_filters(fe.n_fft, fe.feature_size, fe.sampling_rate), fe.mel_filters,
                        rtol=1e-12, atol=1e-12)
        for kind in audio.SYNTHETIC:
            x = audio.synthetic(kind, s, seconds=0.7 * fe.chunk_length)
            ours = audio.log_mel(x, s)
            # transformers' numpy path (float64 STFT like ours) and its default torch path (float32 STFT).
            padded = np.pad(x, (0, fe.n_samples - x.size))[None]
            assert_allclose(ours, fe._np_extract_fbank_features(padded, "cpu").astype(np.float32), atol=1e-5, rtol=0)
            ref = fe(x, sampling_rate=fe.sampling_rate, return_tensors="np").input_features
            assert ours.shape == ref.shape == (1, fe.feature_size, fe.nb_max_frames)
            assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_wav_reader_formats_and_errors(tmp_path):
    settings = _settings()
    x = audio.synthetic("chirp", settings, seconds=0.5)
    stereo = tmp_path / "stereo24.wav"
    pcm = np.clip(np.round(x * (2 ** 23 - 1)), -2 ** 23, 2 ** 23 - 1).astype(np.int32)
    frames = np.stack([pcm, pcm], axis=1).reshape(-1)
    raw = np.stack([(frames >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8).tobytes()
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(16000)
        w.writeframes(raw)
    samples, rate = audio.read_wav(stereo)
    assert rate == 16000 and samples.shape == x.shape
    assert_allclose(samples, x, atol=1e-6)
    slow = tmp_path / "8k.wav"
    audio.write_wav(slow, x, 8000)
    with pytest.raises(InputError, match="8000 Hz; the model takes 16000 Hz"):
        audio.wav_features(slow, settings)
    long = tmp_path / "long.wav"
    audio.write_wav(long, np.tile(x, 4), 16000)
    with pytest.raises(InputError, match="--truncate"):
        audio.wav_features(long, settings)
    assert audio.wav_features(long, settings, truncate=True).shape == (1, 8, 100)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(InputError, match="not a PCM WAV"):
        audio.read_wav(tmp_path / "bad.wav")


def test_inspect_recognises_every_family(family_checkpoints):
    from click.testing import CliRunner

    from toolchain.cli import main

    for family, ck in family_checkpoints.items():
        result = CliRunner().invoke(main, ["inspect", str(ck), "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["family"] == {"mbart": "bart", "marian": "bart"}.get(family, family), data
        assert data["model_type"] == FAMILIES[family][0]


def test_whisper_keeps_its_encoder_8bit(family_checkpoints, tmp_path):
    """A family's quantization defaults (Adapter.keep_8bit): Whisper's encoder is exported at 8 bits
    where a recipe asks 4 (the speech-set study in benchmarks/RESULTS.md), recorded in the manifest;
    `family_defaults: false` exports the recipe as written; text families are untouched."""
    from toolchain.artifact import open_artifact
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export, family_recipe
    from toolchain.specs import load_recipe, load_target, recipe_from_dict

    whisper, t5 = load_checkpoint(family_checkpoints["whisper"]), load_checkpoint(family_checkpoints["t5"])
    int4 = load_recipe("int4")
    used, kept = family_recipe(whisper, int4)
    assert used.quantization["encoder"] == "8da8w" and used.quantization["decoder"] == "8da4w"
    assert kept == {"encoder": {"asked": "8da4w", "used": "8da8w", "why": kept["encoder"]["why"]}}
    assert family_recipe(whisper, load_recipe("int8")) == (load_recipe("int8"), {})
    assert family_recipe(t5, int4) == (int4, {})
    as_written = recipe_from_dict({**int4.to_dict(), "family_defaults": False})
    assert family_recipe(whisper, as_written) == (as_written, {})
    small = recipe_from_dict({**int4.to_dict(), "max_output_len": 12})
    m = export(whisper, small, load_target("executorch-xnnpack"), tmp_path / "w").manifest
    assert m["family_defaults"]["encoder"]["used"] == "8da8w"
    assert m["recipe"]["quantization"]["encoder"] == "8da8w"
    assert m["quantization"]["encoder"]["scheme"] == "8da8w" and m["quantization"]["decoder"]["scheme"] == "8da4w"
    assert open_artifact(tmp_path / "w").manifest == m


# -- the family x target matrix ----------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "executorch", "ai-edge-litert", "litert-torch", "onnxruntime", "coremltools"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@pytest.fixture(scope="session")
def support_results():
    """Cell results, written as JSON at the end of a session that ran every cell."""
    cells: dict[tuple[str, str], dict] = {}
    yield cells
    if len(cells) == len(FAMILIES) * len(TARGETS):
        SUPPORT_JSON.parent.mkdir(parents=True, exist_ok=True)
        data = {"generated_by": "pytest tests/test_families.py", "complete": True,
                "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d"),
                "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
                "versions": _versions(), "families": list(FAMILIES), "targets": TARGETS,
                "recipe": f"fp32, max_input_len {S}, max_output_len {T} (Whisper: 1 s of audio)",
                "cells": [cells[(f, t)] for f in FAMILIES for t in TARGETS]}
        SUPPORT_JSON.write_text(json.dumps(data, indent=1) + "\n")


@pytest.fixture(scope="session")
def small_recipe_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("families-recipe") / "small.yaml"
    p.write_text(f"format_version: 1\nname: small\ndescription: test\nmax_input_len: {S}\nmax_output_len: {T}\n"
                 f"quantization: {{}}\ntolerance: {{max_abs_logit_diff: 0.001}}\n")
    return p


@pytest.fixture(scope="session")
def family_artifacts(tmp_path_factory):
    """(family, target) -> artifact path, exported on first use, once per session."""
    base = tmp_path_factory.mktemp("family-artifacts")
    return base, {}


def _artifact(family_artifacts, family_checkpoints, recipe: Path, family: str, target: str):
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    base, cache = family_artifacts
    if (family, target) not in cache:
        t0 = time.time()
        art = export(load_checkpoint(family_checkpoints[family]), load_recipe(str(recipe)), load_target(target),
                     base / f"{family}-{target}")
        cache[(family, target)] = (art, round(time.time() - t0, 1))
    return cache[(family, target)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_on_target(family_checkpoints, family_artifacts, small_recipe_path, support_results, family, target):
    cell = {"family": family, "target": target}
    support_results[(family, target)] = {**cell, "status": "fail", "detail": "did not finish"}
    if (family, target) in UNSUPPORTED:
        with pytest.raises(InputError) as e:
            _artifact(family_artifacts, family_checkpoints, small_recipe_path, family, target)
        assert UNSUPPORTED[(family, target)] in str(e.value)
        support_results[(family, target)] = {**cell, "status": "unsupported", "detail": str(e.value)}
        return
    try:
        art, export_s = _artifact(family_artifacts, family_checkpoints, small_recipe_path, family, target)
    except Exception as e:
        support_results[(family, target)] = {**cell, "status": "fail", "detail": f"export: {str(e).splitlines()[0]}"}
        raise
    backend = backends.for_target(art.target)
    ok, why = backend.can_execute()
    facts = {"export_s": export_s, "model_bytes": art.manifest["sizes"]["model_bytes"]}
    if "delegation" in art.manifest:
        facts["delegated_fraction"] = {p: d["delegated_fraction"] for p, d in art.manifest["delegation"].items()}
    if not ok:
        # Structure only, and the runtime's refusal to execute is one clear line, never a skip.
        report = backend.verify_structure(art)
        with pytest.raises(InputError) as e:
            backend.open_session(art)
        support_results[(family, target)] = {
            **cell, **facts, "status": "structure" if report["passed"] else "fail",
            "detail": f"structure checked ({', '.join(report['checked'][1:])}); not executed: {e.value}",
            "failures": report["failures"]}
        assert report["passed"], report["failures"]
        return
    from toolchain.verify import verify

    report = verify(art)
    support_results[(family, target)] = {
        **cell, **facts, "status": "pass" if report.passed and report.sequence_match == 1.0 else "fail",
        "detail": "; ".join(report.failures) or "parity with eager transformers",
        "sequence_match": report.sequence_match, "max_abs_logit_diff": report.max_abs_logit_diff,
        "top1_agreement": report.top1_agreement, "examples": report.examples}
    assert report.passed, report.failures
    assert report.sequence_match == 1.0, report.to_dict()
    assert report.max_abs_logit_diff <= 1e-3


# -- Whisper end to end ------------------------------------------------------------------------


def _write_chirp(path: Path, rate: int = 16000, seconds: float = 0.8) -> np.ndarray:
    """A rising chirp written with the stdlib wave module (16-bit PCM mono)."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.4 * np.sin(2 * np.pi * (200 * t + 2000 * t * t))
    pcm = np.round(x * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return pcm.astype(np.float32) / 32768.0


def test_whisper_artifact_transcribes_wav_like_eager(family_checkpoints, family_artifacts, small_recipe_path, tmp_path):
    from click.testing import CliRunner
    from tokenizers import Tokenizer

    from toolchain.cli import main
    from toolchain.generate import decoding

    art, _ = _artifact(family_artifacts, family_checkpoints, small_recipe_path, "whisper", "executorch-xnnpack")
    m = art.manifest
    assert m["input"]["kind"] == "log_mel" and m["input"]["sampling_rate"] == 16000
    assert [e["name"] for e in m["programs"]["encode"]["inputs"]] == ["input_features"]
    assert m["programs"]["encode"]["inputs"][0]["shape"] == [1, 8, 100]
    assert "cross_bias" not in [e["name"] for e in m["programs"]["decode"]["inputs"]]
    wav = tmp_path / "chirp.wav"
    samples = _write_chirp(wav)
    feats = audio.wav_features(wav, m["input"])
    model = load_checkpoint(family_checkpoints["whisper"]).load_model()
    with torch.no_grad():
        ref = model.generate(input_features=torch.from_numpy(feats),
                             max_new_tokens=T - len(m["tokens"]["decoder_prompt"]))[0].tolist()
    ref = ref[: ref.index(0)] if 0 in ref else ref
    session = backends.for_target(art.target).open_session(art, threads=2)
    gen = greedy(session, None, inputs=(feats,), max_input_len=S, max_output_len=T, **decoding(m["tokens"]))
    assert gen.tokens == ref and len(set(ref)) >= 2
    assert gen.prompt == m["tokens"]["decoder_prompt"]
    # The features equal what transformers' extractor computes from the same samples.
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(**FE_ARGS)
    assert_allclose(feats, fe(samples, sampling_rate=16000, return_tensors="np").input_features, atol=1e-4)
    # `edgeseq run` takes the WAV file and prints the text of those tokens.
    tok = Tokenizer.from_file(str(art.file("tokenizer.json")))
    result = CliRunner().invoke(main, ["run", str(art.path), str(wav)])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == tok.decode(ref, skip_special_tokens=True)
    bad = CliRunner().invoke(main, ["run", str(art.path), str(tmp_path / "missing.wav")])
    assert bad.exit_code == 2 and "no such WAV file" in bad.output
    # verify reads WAV rows (paths relative to the eval file) and scores the task too.
    from toolchain.verify import verify

    text = tok.decode(ref, skip_special_tokens=True)
    (tmp_path / "eval.jsonl").write_text(json.dumps({"input": "chirp.wav", "target": text}) + "\n")
    report = verify(art, eval_file=str(tmp_path / "eval.jsonl"))
    assert report.passed and report.sequence_match == 1.0 and report.task_accuracy == 1.0, report.to_dict()
    # probe feeds synthetic log-mel features; time to first token includes the forced prompt steps.
    from toolchain.probe.runner import probe

    r = probe(str(art.path), runs=1, warmup=0, input_len=None, output_len=None, threads=2)
    assert r["input_len"] == 100 and r["output_len"] == T - len(m["tokens"]["decoder_prompt"])
    assert r["ttft_ms"]["p50"] > 0 and r["decode_ms_per_token"]["p50"] > 0
    # The native C++ runner (log-mel features as a raw float32 file, the forced prompt with its
    # language slot, suppress / begin-suppress tokens): the same text as the Python Session.
    from toolchain import native

    try:
        native.build("host")
    except InputError as e:
        pytest.skip(f"native runner not buildable here: {e}")
    result = CliRunner().invoke(main, ["run", str(art.path), str(wav), "--runner", "native"])
    assert result.exit_code == 0 and result.stdout.rstrip("\n") == text, result.output


def test_whisper_verify_reports_wer(family_checkpoints, family_artifacts, small_recipe_path, tmp_path):
    """verify scores speech with WER/CER (jiwer after Whisper's English normalizer) for the artifact
    and eager side by side; --metric overrides the recipe's auto choice."""
    import jiwer
    from click.testing import CliRunner
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from toolchain.cli import main

    art, _ = _artifact(family_artifacts, family_checkpoints, small_recipe_path, "whisper", "executorch-xnnpack")
    _write_chirp(tmp_path / "chirp.wav")
    text = CliRunner().invoke(main, ["run", str(art.path), str(tmp_path / "chirp.wav")]).stdout.rstrip("\n")
    target = "Okay, " + text.upper() + " extra words."
    (tmp_path / "eval.jsonl").write_text(json.dumps({"input": "chirp.wav", "target": target}) + "\n")
    result = CliRunner().invoke(main, ["verify", str(art.path), "--eval", str(tmp_path / "eval.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    norm = EnglishTextNormalizer({})
    want = {"wer": jiwer.wer(norm(target), norm(text)), "cer": jiwer.cer(norm(target), norm(text))}
    assert rep["metric"] == "wer" and rep["task_accuracy"] == 0.0 and rep["decided_by"] == "parity"
    assert want["wer"] > 0 and rep["scores"] == pytest.approx(want) and rep["reference_scores"] == rep["scores"]
    assert rep["task_metric"] == rep["reference_metric"] == pytest.approx(want["wer"])
    assert rep["normalizer"].startswith("whisper-english")
    chrf = CliRunner().invoke(main, ["verify", str(art.path), "--eval", str(tmp_path / "eval.jsonl"), "--json",
                                     "--metric", "chrf"])
    assert chrf.exit_code == 0 and set(json.loads(chrf.stdout)["scores"]) == {"chrf", "bleu"}, chrf.output
