"""Multilingual Whisper at run time: the language and the task are chosen when the artifact
runs (`run`/`verify --language --task`, an eval row's "language"/"task"), not at export.

A tiny random multilingual Whisper (en, de, fr; transcribe, translate; a generation config with
lang_to_id / task_to_id / is_multilingual as transformers' Whisper configs have them, built here)
is exported once, fp32 to executorch-xnnpack, and its tokens for (language, task) pairs must
equal `WhisperForConditionalGeneration.generate(language=..., task=...)` token for token, through
the Python Session and the native runner; with no language, the one detected must be the one
generate detects, and be reported. English-only checkpoints (tiny.en) and artifacts without a
language prompt (text families, artifacts from before format 3) refuse a choice in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolchain import audio
from toolchain.cli import main
from toolchain.errors import InputError
from toolchain.manifest import Tokens
from toolchain.prompt import build, check_choice

LANGS = ("en", "de", "fr")
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in LANGS), "<|transcribe|>",
            "<|translate|>", "<unk>"]
FE_ARGS = dict(feature_size=8, sampling_rate=16000, hop_length=160, chunk_length=1, n_fft=400)
PAIRS = [("en", "transcribe"), ("fr", "translate"), ("german", None), (None, "translate")]
T = 12  # the small recipe's max_output_len


def _tokenizer():
    """Whisper's special tokens plus lowercase letters, digits and space; <|notimestamps|> last
    (generate reads every id above it as a timestamp)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in " abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
    vocab["<|notimestamps|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens([*SPECIALS, "<|notimestamps|>"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _generation(v: dict[str, int], multilingual: bool = True):
    """A generation config shaped like openai/whisper-*'s (language and task left to generate);
    English-only like tiny.en's: is_multilingual false, no lang_to_id, notimestamps forced."""
    from transformers import GenerationConfig

    common = dict(decoder_start_token_id=v["<|startoftranscript|>"], eos_token_id=0, pad_token_id=0, bos_token_id=0,
                  no_timestamps_token_id=v["<|notimestamps|>"], suppress_tokens=[v["<unk>"]],
                  begin_suppress_tokens=[0, v[" "]], return_timestamps=False)
    if not multilingual:
        return GenerationConfig(**common, is_multilingual=False, forced_decoder_ids=[[1, v["<|notimestamps|>"]]])
    return GenerationConfig(**common, is_multilingual=True,
                            lang_to_id={f"<|{c}|>": v[f"<|{c}|>"] for c in LANGS},
                            task_to_id={"transcribe": v["<|transcribe|>"], "translate": v["<|translate|>"]})


def _model():
    """Random weights, a wide init so the logits are far from ties (fp32 XNNPACK vs eager) and
    greedy outputs vary (at init_std 0.02 they are one token repeated)."""
    from transformers import WhisperForConditionalGeneration

    from tiny_configs import tiny_config

    tok = _tokenizer()
    torch.manual_seed(7)  # a seed whose outputs vary with the input and the prompt
    model = WhisperForConditionalGeneration(
        tiny_config("whisper", "whisper", vocab_size=tok.get_vocab_size(), decoder_layers=1, init_std=0.5)).eval()
    model.generation_config = _generation(tok.get_vocab())
    return model, tok


def _features(kind: str) -> np.ndarray:
    n = FE_ARGS["chunk_length"] * FE_ARGS["sampling_rate"]
    settings = {"kind": "log_mel", **audio.SETTINGS, **FE_ARGS, "n_samples": n, "frames": n // FE_ARGS["hop_length"]}
    return audio.log_mel(audio.synthetic(kind, settings), settings)


def _init_tokens(model, gen, language, task) -> list[int]:
    """What generate feeds after setting language and task (its own two steps)."""
    import copy

    gen = copy.deepcopy(gen)
    model._set_language_and_task(language=language, task=task, is_multilingual=None, generation_config=gen)
    return model._retrieve_init_tokens(torch.from_numpy(_features("chirp")), batch_size=1, generation_config=gen,
                                       config=model.config, num_segment_frames=100, kwargs={})[0].tolist()


# -- the prompt, without an export ------------------------------------------------------------

def test_run_time_prompt_is_generates():
    from toolchain.arch.whisper import task_prompt

    model, _ = _model()
    opts = task_prompt(model.generation_config, model.config)
    assert opts.language_names["french"] == "fr" and "japanese" not in opts.language_names
    for language, task in [*PAIRS, (None, None), ("<|de|>", "transcribe"), ("FR", None), ("english", "translate")]:
        prompt, ids = build(opts, language, task)
        init = _init_tokens(model, model.generation_config, language, task)
        if None in prompt:  # generate detected the language there
            assert prompt.index(None) == 0 and init[1] in ids
            prompt = [init[1], *prompt[1:]]
        assert [model.generation_config.decoder_start_token_id, *prompt] == init, (language, task)
    with pytest.raises(InputError, match="'ja' is not a language of this model .*en, fr"):
        build(opts, "ja", None)
    with pytest.raises(InputError, match="--task 'summarize': use transcribe or translate"):
        check_choice(opts, None, "summarize")


def test_english_only_takes_english_transcription_only():
    """tiny.en's generation config: transformers refuses any language/task; edgeseq takes English
    transcription (its default prompt) and refuses the rest in one line."""
    from toolchain.arch.whisper import decoder_prompt, task_prompt

    model, tok = _model()
    gen = _generation(tok.get_vocab(), multilingual=False)
    opts = task_prompt(gen, model.config)
    assert opts.english_only and decoder_prompt(gen, model.config) == ([tok.token_to_id("<|notimestamps|>")], [])
    for ok in [(None, None), ("en", None), ("English", "transcribe"), (None, "transcribe")]:
        assert check_choice(opts, *ok) == (None, None)
    for bad, said in [(("de", None), "--language de: this checkpoint is English-only"),
                      ((None, "translate"), "--task translate: this checkpoint is English-only"),
                      (("en", "translate"), "--task translate")]:
        with pytest.raises(InputError, match=said):
            check_choice(opts, *bad)
    with pytest.raises(ValueError, match="English-only"):  # what transformers says
        model._set_language_and_task(language="de", task=None, is_multilingual=None, generation_config=gen)
    tokens = Tokens(1, 0, 0, 50, decoder_prompt=(49,), task_prompt=opts)
    assert tokens.decoding("en", "transcribe")["prompt"] == (49,)


def test_text_tokens_refuse_a_language():
    tokens = Tokens(0, 1, 0, 50, decoder_prompt=(3,))
    assert tokens.decoding()["prompt"] == (3,)
    with pytest.raises(InputError, match="--language: this artifact has no language/task prompt"):
        tokens.decoding("fr")


# -- one exported artifact --------------------------------------------------------------------

@pytest.fixture(scope="module")
def multilingual(tmp_path_factory, small_recipe) -> tuple[Path, Path]:
    """(checkpoint, artifact): the tiny multilingual Whisper, exported fp32 to executorch-xnnpack."""
    from conftest import _export_xnnpack
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

    base = tmp_path_factory.mktemp("whisper-lang")
    ck = base / "ck"
    model, tok = _model()
    model.save_pretrained(ck)
    WhisperFeatureExtractor(**FE_ARGS).save_pretrained(ck)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            unk_token="<unk>").save_pretrained(ck)
    return ck, _export_xnnpack(ck, small_recipe, base / "art")


def _generate(ck: Path, kind: str, language: str | None, task: str | None) -> tuple[list[int], int]:
    """Eager generate's tokens (up to EOS) and the language it ran in (detected when not given)."""
    from toolchain.checkpoint import load_checkpoint

    model = load_checkpoint(ck).load_model()
    x = torch.from_numpy(_features(kind))
    kw = {k: v for k, v in (("language", language), ("task", task)) if v is not None}
    with torch.no_grad():
        init = _init_tokens(model, model.generation_config, language, task)
        seq = model.generate(input_features=x, max_new_tokens=T - (len(init) - 1), do_sample=False, **kw)[0].tolist()
        lang = init[1] if language is not None else int(model.detect_language(input_features=x)[0])
    return (seq[: seq.index(0)] if 0 in seq else seq), lang


def _codes(ck: Path) -> dict[int, str]:
    return {v: k.strip("<|>") for k, v in json.loads((ck / "generation_config.json").read_text())["lang_to_id"].items()}


def _native_or_skip() -> None:
    """The host edgeseq-runner ($EDGESEQ_RUNNER or build/runner-host), built if missing."""
    from toolchain import native

    try:
        native.runner_binary("host")
    except InputError:
        try:
            native.build("host")
        except InputError as e:
            pytest.skip(f"native runner not buildable here: {e}")


def _run(*args) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["python", "native"])
def test_run_language_task_equal_generate(multilingual, runner):
    ck, art = multilingual
    if runner == "native":
        _native_or_skip()
    lang_id = _codes(ck)
    outputs = set()
    for kind in ("chirp", "tones"):
        for language, task in [*PAIRS, (None, None)]:
            flags = [*(["--language", language] if language else []), *(["--task", task] if task else [])]
            code, out, err = _run("run", art, f"synthetic:{kind}", "--json", "--runner", runner, *flags)
            assert code == 0, err
            r = json.loads(out)
            ref, ref_lang = _generate(ck, kind, language, task)
            assert r["tokens"] == ref, (kind, language, task)
            assert r["language"] == lang_id[ref_lang] and r["prompt"][0] == ref_lang
            # generate adds transcribe for a given language; with neither, no task token at all
            assert r["task"] == (task or ("transcribe" if language else None))
            assert r["language_detected"] == (language is None)
            assert ("note: detected language: " + r["language"] in err) == (language is None), err
            outputs.add(tuple(r["tokens"]))
    assert len(outputs) >= 6  # the prompt and the input matter: not one output for every choice
    assert min(len(set(o)) for o in outputs) >= 2  # and none is one token repeated


@pytest.mark.slow
def test_verify_rows_choose_language_and_task(multilingual, tmp_path):
    ck, art = multilingual
    rows = [{"input": "synthetic:chirp", "language": "fr", "task": "translate"},
            {"input": "synthetic:tones", "language": "de"},
            {"input": "synthetic:noise", "task": "translate"},
            {"input": "synthetic:chirp"}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _native_or_skip()
    for runner in ("python", "native"):
        code, out, err = _run("verify", art, "--eval", tmp_path / "eval.jsonl", "--language", "en", "--json",
                              "--runner", runner)
        assert code == 0, err
        rep = json.loads(out)
        assert rep["sequence_match"] == 1.0 and rep["top1_agreement"] == 1.0, runner
        said = [(r["language"], r["task"], r["language_detected"]) for r in rep["languages"]]
        # Rows without a language take --language en; a row's own keys win.
        assert said == [("fr", "translate", False), ("de", "transcribe", False), ("en", "translate", False),
                        ("en", "transcribe", False)]
    code, out, err = _run("verify", art, "--limit", "2", "--json")  # built-in rows, language detected
    assert code == 0, err
    rep = json.loads(out)
    assert rep["sequence_match"] == 1.0 and all(r["language_detected"] for r in rep["languages"])
    for kind, r in zip(audio.SYNTHETIC, rep["languages"], strict=False):
        assert r["language"] == _codes(ck)[_generate(ck, kind, None, None)[1]]


@pytest.mark.slow
def test_refusals_and_older_artifacts(multilingual, tmp_path):
    """One line, exit 2: a language the model lacks, a bad eval-row key, an English-only model's
    translate; an artifact from before format 3 (no task_prompt) still runs its default prompt."""
    ck, art = multilingual
    code, _, err = _run("run", art, "synthetic:chirp", "--language", "ja")
    assert code == 2 and err.count("\n") == 1 and "'ja' is not a language of this model" in err, err
    (tmp_path / "bad.jsonl").write_text(json.dumps({"input": "synthetic:chirp", "language": 3}) + "\n")
    code, _, err = _run("verify", art, "--eval", tmp_path / "bad.jsonl")
    assert code == 2 and "row 1: 'language' must be a string" in err, err

    def edited(name: str, change) -> Path:
        out = tmp_path / name
        shutil.copytree(art, out)
        m = json.loads((out / "manifest.json").read_text())
        change(m)
        (out / "manifest.json").write_text(json.dumps(m))
        return out

    english = edited("en-only", lambda m: m["tokens"]["task_prompt"].update(is_multilingual=False, lang_to_id={}))
    code, _, err = _run("run", english, "synthetic:chirp", "--task", "translate")
    assert code == 2 and err.count("\n") == 1 and "English-only" in err, err

    def older(m):
        m["format_version"] = 2
        del m["tokens"]["task_prompt"]

    old = edited("v2", older)
    code, out, err = _run("run", old, "synthetic:chirp", "--json")
    assert code == 0, err
    assert json.loads(out)["tokens"] == _generate(ck, "chirp", None, None)[0]
    assert json.loads(out)["language"] is None  # no language table to name it with
    code, _, err = _run("run", old, "synthetic:chirp", "--language", "fr")
    assert code == 2 and "no language/task prompt" in err and "re-export" in err, err
