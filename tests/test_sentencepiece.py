"""Checkpoints whose tokenizer is SentencePiece files, with no tokenizer.json (issue 18.5).

Marian (opus-mt): source.spm, target.spm and vocab.json, as MarianTokenizer.save_pretrained
writes them (it has no fast version); T5: spiece.model only. The SentencePiece models are
trained here on a small built-in corpus; the checkpoints are tiny random models shaped like
the real ones (opus-mt: </s> 0, <unk> 1, <pad> last and the decoder start, forced EOS, <pad>
banned by bad_words_ids, beam search in the generation config).

What is compared: our ids and text with transformers' MarianTokenizer / T5Tokenizer; `edgeseq
run` on executorch-xnnpack and onnx-cpu artifacts with eager `generate` decoded by them; verify.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from toolchain.artifact import open_artifact
from toolchain.checkpoint import load_checkpoint
from toolchain.cli import main
from toolchain.errors import InputError

pytestmark = pytest.mark.slow  # trains SentencePiece models, exports Marian and T5

EN = ["the quick brown fox jumps over the lazy dog", "a small frog sat on the log by the river",
      "Tom asked his teacher for advice, and she gave it.", "I am a small frog. We like rivers and lakes!",
      "the house is wonderful and the garden is green", "where is the train station? it is near the old bridge.",
      "she reads a book every evening before she sleeps", "numbers like 12, 345 and 2021 are everywhere",
      "we walked home through the rain without an umbrella", "hello world, this is a test of the tokenizer"]
DE = ["der schnelle braune Fuchs springt über den faulen Hund", "ein kleiner Frosch saß auf dem Baumstamm am Fluss",
      "Tom bat seinen Lehrer um Rat, und sie gab ihn ihm.", "Ich bin ein kleiner Frosch. Wir mögen Flüsse und Seen!",
      "das Haus ist wunderbar und der Garten ist grün", "wo ist der Bahnhof? er ist nahe der alten Brücke.",
      "sie liest jeden Abend ein Buch, bevor sie schläft", "Zahlen wie 12, 345 und 2021 sind überall",
      "wir gingen ohne Regenschirm durch den Regen nach Hause", "hallo Welt, dies ist ein Test des Tokenizers"]
DROPPED = "▁river"  # a source piece vocab.json lacks: MarianTokenizer maps it to <unk>
TEXTS = ["the small frog sat by the river", "Tom  asked   his teacher ☃ for advice", ">>de<< the house is green",
         "a b</s>c <pad> d<unk>e", "  where is the bridge?  ", "über 12 Brücken ☃☃ und 日本", ""]
RUN_TEXTS = ["the quick brown fox", "she reads a book every evening"]
T_OUT = 12  # the small recipe's max_output_len
TARGETS = ["executorch-xnnpack", "onnx-cpu"]


def _train(lines: list[str], path: Path, vocab_size: int, **ids) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 8), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1, **ids)
    path.write_bytes(model.getvalue())


def _marian_tokenizer(d: Path):
    import warnings

    from transformers import MarianTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MarianTokenizer.from_pretrained(d, local_files_only=True)


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory) -> Path:
    return build_marian(tmp_path_factory.mktemp("marian") / "opus-mt-tiny", tmp_path_factory.mktemp("spm"))


def build_marian(d: Path, spms: Path) -> Path:
    """A tiny random MarianMTModel with opus-mt's tokenizer files and no tokenizer.json."""
    import sentencepiece as spm
    from transformers import GenerationConfig, MarianMTModel, MarianTokenizer

    from tiny_configs import tiny_config

    _train(EN, spms / "source.spm", 120)
    _train(DE, spms / "target.spm", 120)
    vocab = {"</s>": 0, "<unk>": 1}  # opus-mt's order: </s>, <unk>, the pieces of both sides, <pad>
    for name in ("source.spm", "target.spm"):
        sp = spm.SentencePieceProcessor(model_file=str(spms / name))
        for i in range(sp.GetPieceSize()):
            vocab.setdefault(sp.IdToPiece(i), len(vocab))
    for p in ("<s>", DROPPED):
        vocab.pop(p)
    vocab = {p: i for i, p in enumerate(vocab)}
    vocab[">>de<<"] = len(vocab)
    vocab["<pad>"] = pad = len(vocab)
    (spms / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    MarianTokenizer(str(spms / "source.spm"), str(spms / "target.spm"), str(spms / "vocab.json")).save_pretrained(d)
    cfg = tiny_config("marian", "marian", vocab_size=len(vocab), pad_token_id=pad, eos_token_id=0,
                      decoder_start_token_id=pad, forced_eos_token_id=0, init_std=0.3)
    torch.manual_seed(1)  # with this wide init, the output depends on the input (checked below)
    model = MarianMTModel(cfg).eval()
    model.generation_config = GenerationConfig(bad_words_ids=[[pad]], decoder_start_token_id=pad, eos_token_id=0,
                                               forced_eos_token_id=0, pad_token_id=pad, max_length=512, num_beams=4)
    model.save_pretrained(d)
    assert not (d / "tokenizer.json").exists()
    return d


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    """A tiny random T5 with only spiece.model (T5's ids: <pad> 0, </s> 1, <unk> 2)."""
    from transformers import T5ForConditionalGeneration

    from tiny_configs import tiny_config

    d = tmp_path_factory.mktemp("t5") / "t5-spiece"
    d.mkdir()
    _train(EN + DE, d / "spiece.model", 150, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    torch.manual_seed(0)  # with this wide init, the output depends on the input (checked below)
    cfg = tiny_config("t5", "v1.0", vocab_size=256, initializer_factor=2.0)
    T5ForConditionalGeneration(cfg).save_pretrained(d)
    return d


def _export(ck: Path, recipe: Path, target: str, out: Path) -> Path:
    from toolchain.api import export

    return export(ck, target, str(recipe), out).path


@pytest.fixture(scope="module")
def marian_artifacts(marian_dir, small_recipe, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("marian-art")
    return {t: _export(marian_dir, small_recipe, t, base / t) for t in TARGETS}


@pytest.fixture(scope="module")
def t5_artifact(t5_dir, small_recipe, tmp_path_factory) -> Path:
    return _export(t5_dir, small_recipe, "executorch-xnnpack", tmp_path_factory.mktemp("t5-art") / "a")


def _eager_text(ck: Path, tok, text: str) -> tuple[str, list[int]]:
    """What a user gets from transformers: greedy generate (the checkpoint's generation config,
    beams turned off), decoded by the checkpoint's own tokenizer."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(ck, local_files_only=True).eval()
    with torch.no_grad():
        out = model.generate(**tok(text, return_tensors="pt"), max_new_tokens=T_OUT, num_beams=1, do_sample=False)
    return tok.decode(out[0], skip_special_tokens=True), out[0].tolist()


def _run(art: Path, *args: str):
    return CliRunner().invoke(main, ["run", str(art), *args])


# ---- Marian -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def marian_pair(marian_dir):
    """(transformers' MarianTokenizer, ours) for the same checkpoint."""
    return _marian_tokenizer(marian_dir), load_checkpoint(marian_dir).load_tokenizer()


def test_marian_ids_and_text_equal_marian_tokenizer(marian_pair):
    mt, ours = marian_pair
    for text in TEXTS:
        ids = mt(text)["input_ids"]
        assert ours.encode(text).ids == ids, text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == mt.decode(ids, skip_special_tokens=skip), text
    # The cases the texts are there for: a piece vocab.json lacks, unknown characters, a language code.
    assert mt.unk_token_id in mt(" river")["input_ids"] and "☃" in ours.encode(TEXTS[1]).unknown
    assert ours.encode(TEXTS[2]).ids[0] == mt.convert_tokens_to_ids(">>de<<")
    ids = list(range(len(mt.get_vocab())))  # every id, specials and the language code included
    assert ours.decode(ids) == mt.decode(ids, skip_special_tokens=True)


ALPHABET = "abcdefghijklmnopqrstuvwxyzäöüß ABCTÜ.,?!'0123456789☃日\t"
PIECES = st.one_of(st.text(alphabet=ALPHABET, max_size=8),
                   st.sampled_from(["</s>", "<unk>", "<pad>", ">>de<<", ">>", "<<", "▁", "  ", "river", " the"]))


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(parts=st.lists(PIECES, max_size=6))
def test_fuzzed_marian_ids_equal_marian_tokenizer(parts, marian_pair):
    mt, ours = marian_pair
    text = "".join(parts)
    ids = mt(text)["input_ids"]
    assert ours.encode(text).ids == ids
    assert ours.decode(ids) == mt.decode(ids, skip_special_tokens=True)


def test_marian_separate_vocabularies(marian_dir, tmp_path):
    """separate_vocabs: the decoder's ids come from target_vocab.json, joined by target.spm."""
    d = tmp_path / "sep"
    shutil.copytree(marian_dir, d)
    vocab = json.loads((d / "vocab.json").read_text())
    (d / "target_vocab.json").write_text(json.dumps({p: len(vocab) - 1 - i for p, i in vocab.items()}))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "separate_vocabs": True}))
    mt, ours = _marian_tokenizer(d), load_checkpoint(d).load_tokenizer()
    for text in TEXTS:
        ids = mt(text)["input_ids"]
        assert ours.encode(text).ids == ids
        assert ours.decode(ids) == mt.decode(ids, skip_special_tokens=True), text


@pytest.mark.parametrize("target", TARGETS)
def test_marian_artifact_runs_like_eager(target, marian_dir, marian_artifacts):
    art = open_artifact(marian_artifacts[target])
    spec = art.manifest["tokens"]["tokenizer"]
    assert spec["kind"] == "marian-sentencepiece" and art.manifest["format_version"] >= 2
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (art.path / name).read_bytes() == (marian_dir / name).read_bytes() and name in art.manifest["files"]
    assert "tokenizer.json" not in art.manifest["files"]
    assert art.manifest["tokens"]["suppress_tokens"] == [art.manifest["tokens"]["pad_token_id"]]  # bad_words_ids
    mt = _marian_tokenizer(marian_dir)
    outputs = set()
    for text in RUN_TEXTS:
        expected, tokens = _eager_text(marian_dir, mt, text)
        result = _run(art.path, text)
        assert result.exit_code == 0, result.output
        assert result.stdout.rstrip("\n") == expected
        outputs.add(expected)
        assert len(set(tokens)) >= 3  # not a vacuous comparison
    assert len(outputs) == len(RUN_TEXTS) and all(outputs)


@pytest.mark.parametrize("target", TARGETS)
def test_marian_artifact_verifies(target, marian_artifacts):
    from toolchain.verify import verify

    report = verify(open_artifact(marian_artifacts[target]))
    assert report.passed, report.failures
    assert report.sequence_match == 1.0 and report.max_abs_logit_diff < 1e-3


def test_marian_run_refuses_unknown_characters(marian_artifacts):
    art = marian_artifacts["executorch-xnnpack"]
    result = _run(art, "the ☃ fox")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "characters the tokenizer does not know: '☃'" in result.stderr
    assert _run(art, "the ☃ fox", "--allow-unknown").exit_code == 0


def test_run_needs_neither_transformers_nor_torch(marian_artifacts, t5_artifact):
    """`edgeseq run`'s tokenizer side: sentencepiece or tokenizers only (it must start fast)."""
    code = ("import sys\nfrom toolchain.artifact import open_artifact\nfrom toolchain.tokenizer import from_manifest\n"
            "for p in sys.argv[1:]:\n    a = open_artifact(p)\n    t = from_manifest(a.manifest['tokens'], a.path)\n"
            "    print(t.decode(t.encode('the small frog').ids))\n"
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(marian_artifacts["onnx-cpu"]), str(t5_artifact)],
                         capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["the small frog", "the small frog", "[]"]


# ---- T5 -----------------------------------------------------------------------------------------


def _t5_tokenizer(d: Path):
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(d, local_files_only=True)


def test_t5_spiece_ids_and_text_equal_t5_tokenizer(t5_dir):
    t5, ours = _t5_tokenizer(t5_dir), load_checkpoint(t5_dir).load_tokenizer()
    for text in [*TEXTS, "<extra_id_0> fox <extra_id_7>", "Don't stop ."]:
        ids = t5(text)["input_ids"]
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids) == t5.decode(ids, skip_special_tokens=True), text
    assert ours.encode(TEXTS[1]).unknown == ["☃"]


def test_t5_spiece_artifact_runs_like_eager(t5_dir, t5_artifact):
    from toolchain.verify import verify

    art = open_artifact(t5_artifact)
    assert art.manifest["tokens"]["tokenizer"] == "tokenizer.json"  # converted from spiece.model
    t5, outputs = _t5_tokenizer(t5_dir), set()
    for text in RUN_TEXTS:
        expected, tokens = _eager_text(t5_dir, t5, text)
        result = _run(art.path, text)
        assert result.exit_code == 0, result.output
        assert result.stdout.rstrip("\n") == expected and len(set(tokens)) >= 3
        outputs.add(expected)
    assert len(outputs) == len(RUN_TEXTS) and all(outputs)
    report = verify(art)
    assert report.passed and report.sequence_match == 1.0, report


def test_format_1_artifact_still_opens(t5_artifact, tmp_path):
    """An artifact written before SentencePiece support (format_version 1, tokenizer.json) runs."""
    a = tmp_path / "old"
    shutil.copytree(t5_artifact, a)
    m = json.loads((a / "manifest.json").read_text())
    (a / "manifest.json").write_text(json.dumps({**m, "format_version": 1}))
    result = _run(a, RUN_TEXTS[0])
    assert result.exit_code == 0 and result.stdout == _run(t5_artifact, RUN_TEXTS[0]).stdout


# ---- bad input ----------------------------------------------------------------------------------


def _vocab_edit(change):
    def edit(d: Path) -> None:
        vocab = json.loads((d / "vocab.json").read_text())
        (d / "vocab.json").write_text(json.dumps(change(vocab)))
    return edit


# id: (change to the good Marian checkpoint, file the error names, what it says)
MARIAN_CASES = {
    "source.spm corrupt": (lambda d: (d / "source.spm").write_bytes(b"\x00garbage" * 9), "source.spm",
                           "not a SentencePiece model"),
    "target.spm truncated": (lambda d: (d / "target.spm").write_bytes((d / "target.spm").read_bytes()[:50]),
                             "target.spm", "not a SentencePiece model"),
    "target.spm missing": (lambda d: (d / "target.spm").unlink(), "target.spm", "missing"),
    "vocab.json truncated": (lambda d: (d / "vocab.json").write_text((d / "vocab.json").read_text()[:30]),
                             "vocab.json", "invalid JSON"),
    "vocab.json a list": (lambda d: (d / "vocab.json").write_text("[1, 2]"), "vocab.json", "expected a JSON object"),
    "vocab.json id not an integer": (_vocab_edit(lambda v: {**v, "▁the": "x"}), "vocab.json",
                                     "not a non-negative integer"),
    "vocab.json without <unk>": (_vocab_edit(lambda v: {p: i for p, i in v.items() if p != "<unk>"}), "vocab.json",
                                 "<unk> token must be in the vocab"),
    "vocab.json larger than the model": (_vocab_edit(lambda v: {**v, "▁extra": 10_000}), "vocab.json",
                                         "the tokenizer does not match the model"),
    "tokenizer_config.json corrupt": (lambda d: (d / "tokenizer_config.json").write_text("{"),
                                      "tokenizer_config.json", "invalid JSON"),
}


def refused(result, needle: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize("case", list(MARIAN_CASES))
def test_bad_marian_checkpoint(case, marian_dir, tmp_path):
    change, names, problem = MARIAN_CASES[case]
    ck = tmp_path / "ck"
    shutil.copytree(marian_dir, ck)
    change(ck)
    line = refused(CliRunner().invoke(main, ["inspect", str(ck)]), problem)
    assert names in line


def test_bad_t5_spiece(t5_dir, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(t5_dir, ck)
    (ck / "spiece.model").write_bytes(b"not a model")
    assert "spiece.model" in refused(CliRunner().invoke(main, ["inspect", str(ck)]), "not a SentencePiece model")
    (ck / "spiece.model").unlink()
    refused(CliRunner().invoke(main, ["inspect", str(ck)]), "no tokenizer.json")


def _edit_manifest(a: Path, change) -> None:
    m = json.loads((a / "manifest.json").read_text())
    change(m)
    (a / "manifest.json").write_text(json.dumps(m))


ARTIFACT_CASES = {
    "vocab.json edited": (lambda a: (a / "vocab.json").write_text((a / "vocab.json").read_text() + " "),
                          "vocab.json: sha256 does not match"),
    "source.spm replaced": (lambda a: shutil.copyfile(a / "target.spm", a / "source.spm"),
                            "source.spm: sha256 does not match"),
    "tokenizer file not listed": (lambda a: _edit_manifest(a, lambda m: m["tokens"]["tokenizer"].update(
        target_spm="other.spm")), "tokenizer 'other.spm' is not a file listed"),
    "tokenizer file outside": (lambda a: _edit_manifest(a, lambda m: m["tokens"]["tokenizer"].update(
        vocab="../vocab.json")), "tokenizer '../vocab.json' is not a file listed"),
    "unknown tokenizer kind": (lambda a: _edit_manifest(a, lambda m: m["tokens"]["tokenizer"].update(kind="bpe")),
                               "'tokens.tokenizer' must be a file name or a marian-sentencepiece description"),
    "malformed tokenizer setting": (lambda a: _edit_manifest(a, lambda m: m["tokens"]["tokenizer"].update(
        unk_id="1")), "'unk_id' is missing or malformed"),
}


@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_bad_marian_artifact(case, marian_artifacts, tmp_path):
    change, needle = ARTIFACT_CASES[case]
    a = tmp_path / "a"
    shutil.copytree(marian_artifacts["onnx-cpu"], a)
    change(a)
    refused(_run(a, "the fox"), needle)
    with pytest.raises(InputError):
        open_artifact(a)
