"""What edgeseq promises when its input is bad: this file is the list.

Every bad input below ends in exactly one line on stderr, `error: <the file or key>: <the
problem>`, and exit code 2; no traceback (`edgeseq --debug ...` shows one); nothing
half-written on disk. The sections:

  1. checkpoints   missing, truncated or corrupt files; weights that do not fit config.json;
                   pickle weights; a tokenizer from another model; an unsupported architecture
  2. specs         recipes, targets and build matrices: hand-written cases, hypothesis fuzzing
                   (random keys, types, values, YAML syntax), a schema check of every shipped YAML
  3. run time      empty, too long, unknown characters, more tokens than the cache; generation
                   never decodes past the static cache
  4. artifacts     tampered files or manifest, a newer format_version, files the manifest does
                   not list; exports killed at random points; --force never loses the old one
  5. resources     a full disk or read-only output directory: a clear error, nothing left behind
  6. concurrency   two builds on one cache: correct artifacts, no corrupt cache entry

Every case is counted (conftest.BAD_INPUTS, each fuzzed example too) and the session ends
with `bad input: N cases tried (...)`.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.artifact import FORMAT_VERSION, open_artifact, staging_dir
from toolchain.cli import main
from toolchain.errors import InputError
from toolchain.progress import PREFIX_RE as PROGRESS_LINE
from toolchain.specs import Target

from corrupt import (
    YAML_TEXT,
    Recorder,
    bigger_tokenizer,
    default_sigint,
    edit_json,
    edit_manifest,
    enospc,
    erofs,
    fake_lower,
    flip_a_bit,
    mutated,
    to_pickle,
    truncate,
    unlisted_program,
)
from helpers import BAD_INPUTS, DEMO, ROOT

FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, needle: str, section: str, code: int = 2) -> str:
    """The promise: exit 2, one `error: ...` line on stderr containing `needle`, no traceback."""
    BAD_INPUTS[section] += 1
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"traceback: {result.exc_info}"
    assert result.exit_code == code, result.output
    # Progress lines (`[  1.2s] export: ...`, toolchain.progress) may come first; the error is one line.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def library_refuses(fn, needle: str, section: str) -> str:
    BAD_INPUTS[section] += 1
    with pytest.raises(InputError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


def leftovers(d: Path) -> list[str]:
    """Staging or backup dirs an export or build could leave behind."""
    return sorted(p.name for p in d.rglob(".*") if ".tmp" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------------------------------------
# 1. Checkpoints: each problem is one line naming the file; nothing is exported.
# ---------------------------------------------------------------------------------------------


# id: (change to a good checkpoint, file the error names, problem it states, seen by `inspect` too)
CHECKPOINT_CASES = {
    "no config.json": (lambda ck: (ck / "config.json").unlink(), "ck", "no config.json", True),
    "config.json truncated": (lambda ck: truncate(ck / "config.json"), "config.json", "invalid JSON", True),
    "config.json empty": (lambda ck: (ck / "config.json").write_text(""), "config.json", "invalid JSON", True),
    "config.json not UTF-8": (lambda ck: (ck / "config.json").write_bytes(b"\xff\xfe{\x00"), "config.json",
                              "invalid JSON", True),
    "config.json not an object": (lambda ck: (ck / "config.json").write_text("[1, 2]"), "config.json",
                                  "expected a JSON object", True),
    "config size not a number": (lambda ck: edit_json(ck / "config.json", d_model="abc"), "config.json",
                                 "'d_model' must be a positive integer", True),
    "config size zero": (lambda ck: edit_json(ck / "config.json", num_heads=0), "config.json",
                         "'num_heads' must be a positive", True),
    "unsupported architecture": (lambda ck: edit_json(ck / "config.json", model_type="llama"), "config.json",
                                 "unsupported architecture 'llama'; supported model_type values: ", True),
    "no model_type": (lambda ck: edit_json(ck / "config.json", model_type=None), "config.json",
                      "unsupported architecture None", True),
    "safetensors truncated": (lambda ck: truncate(ck / "model.safetensors"), "model.safetensors",
                              "corrupt or truncated safetensors", True),
    "safetensors empty": (lambda ck: (ck / "model.safetensors").write_bytes(b""), "model.safetensors",
                          "corrupt or truncated safetensors", True),
    "safetensors garbage": (lambda ck: (ck / "model.safetensors").write_bytes(os.urandom(256)),
                            "model.safetensors", "corrupt or truncated safetensors", True),
    "no weights": (lambda ck: (ck / "model.safetensors").unlink(), "ck", "no weights", True),
    "pickle weights": (to_pickle, "pytorch_model.bin", "pickle weights can execute code when loaded; refusing", True),
    "weights narrower than config.json": (lambda ck: edit_json(ck / "config.json", d_ff=48), "model.safetensors",
                                          "is [64, 32] in the file, config.json implies [48, 32]", False),
    "config.json has more layers than the weights": (lambda ck: edit_json(ck / "config.json", num_layers=3),
                                                     "model.safetensors",
                                                     "weights do not match config.json: no tensor 'encoder.block.2",
                                                     False),
    "config.json has fewer layers than the weights": (lambda ck: edit_json(ck / "config.json", num_layers=1),
                                                      "model.safetensors",
                                                      "is not part of the model config.json describes", False),
    "vocab_size differs from the embedding": (lambda ck: edit_json(ck / "config.json", vocab_size=50),
                                              "model.safetensors", "'shared.weight' is [45, 32] in the file", False),
    "no tokenizer.json": (lambda ck: (ck / "tokenizer.json").unlink(), "ck", "no tokenizer.json", True),
    "tokenizer.json corrupt": (lambda ck: (ck / "tokenizer.json").write_text("{"), "tokenizer.json",
                               "invalid tokenizer", True),
    "tokenizer larger than the vocabulary": (bigger_tokenizer, "tokenizer.json",
                                             "the tokenizer does not match the model", True),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint(case, checkpoint, small_recipe, tmp_path):
    change, names, problem, at_load = CHECKPOINT_CASES[case]
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    change(ck)
    out = tmp_path / "a"
    line = refused(invoke("export", ck, "-t", "executorch-xnnpack", "-r", small_recipe, "-o", out),
                   problem, "checkpoints")
    assert names in line
    assert not out.exists() and not leftovers(tmp_path)
    if at_load:  # found without loading the weights, by `inspect` too
        assert refused(invoke("inspect", ck), problem, "checkpoints") == line


def test_missing_and_non_directory_checkpoint(tmp_path):
    refused(invoke("inspect", tmp_path / "nope"), "checkpoint not found", "checkpoints")
    (tmp_path / "file").write_text("x")
    refused(invoke("inspect", tmp_path / "file"), "a checkpoint is a directory", "checkpoints")


def test_pickle_accepted_only_with_allow_pickle(checkpoint, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    to_pickle(ck)
    result = invoke("inspect", ck, "--allow-pickle")
    assert result.exit_code == 0, result.output


def test_debug_shows_the_traceback(tmp_path):
    """`--debug` re-raises; without it a real process prints one line and no traceback."""
    result = invoke("--debug", "inspect", tmp_path / "nope")
    assert isinstance(result.exception, InputError)
    cmd = [sys.executable, "-m", "toolchain.cli"]
    quiet = subprocess.run([*cmd, "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    loud = subprocess.run([*cmd, "--debug", "inspect", str(tmp_path / "nope")], capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.strip().count("\n") == 0 and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    BAD_INPUTS["checkpoints"] += 2


# ---------------------------------------------------------------------------------------------
# 2. Recipes, targets, matrices: validated when loaded; a bad key is named in one line.
# ---------------------------------------------------------------------------------------------

RECIPE = {"format_version": 1, "name": "r", "description": "d", "max_input_len": 8, "max_output_len": 8,
          "quantization": {"encoder": "8da8w"}, "group_size": 32, "calibration": "", "encode_lengths": [4],
          "tolerance": {"max_abs_logit_diff": 0.001, "min_sequence_match": 1.0, "max_accuracy_drop": 0.0}}
TARGET = {"format_version": 1, "name": "t", "description": "d", "runtime": "executorch", "backend": "xnnpack",
          "device_class": "cpu", "threads": 2, **({"options": {}} if "options" in Target.__dataclass_fields__ else {})}
MATRIX = {"format_version": 1, "checkpoints": ["ck"], "recipes": ["fp32", "r.yaml"], "targets": ["executorch-xnnpack"],
          "exclude": [{"recipe": "fp32", "target": "onnx-*"}],
          "thresholds": {"max_accuracy_drop": 0.01, "max_slowdown_pct": 25}, "verify_limit": 2, "probe_runs": 1}


def _yaml(doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _with(base: dict, **changes) -> str:
    doc = copy.deepcopy(base)
    for k, v in changes.items():
        doc.pop(k) if v is None else doc.__setitem__(k, v)
    return _yaml(doc)


BAD_RECIPES = [
    ("name: [unclosed", "invalid YAML"),
    ("- a list\n", "must be a YAML mapping"),
    (_with(RECIPE) + "bogus: 1\n", "unknown recipe key 'bogus'"),
    (_with(RECIPE) + "1: x\n", "unknown recipe key 1"),
    (_with(RECIPE) + "name: again\n", "duplicate key 'name'"),
    (_with(RECIPE, max_input_len="eight"), "'max_input_len' must be an integer"),
    (_with(RECIPE, max_input_len=None), "missing required recipe key 'max_input_len'"),
    (_with(RECIPE, max_input_len=0), "'max_input_len' must be between 1 and 8192"),
    (_with(RECIPE, max_output_len=10**6), "'max_output_len' must be between 1 and 8192"),
    (_with(RECIPE, max_output_len=True), "'max_output_len' must be an integer"),
    (_with(RECIPE, group_size=7), "'group_size' must be one of"),
    (_with(RECIPE, format_version=7), "format_version 7 is newer than this tool"),
    (_with(RECIPE, format_version=0), "'format_version' must be >= 1"),
    (_with(RECIPE, name="../../etc"), "'name' must be letters, digits"),
    (_with(RECIPE, name=""), "'name' must be letters, digits"),
    (_with(RECIPE, quantization={"attention": "8da8w"}), "unknown quantization component 'attention'"),
    (_with(RECIPE, quantization={"encoder": "int3"}), "unknown quantization scheme 'int3' for encoder"),
    (_with(RECIPE, quantization={"encoder": 8}), "'quantization.encoder' must be a string"),
    (_with(RECIPE, quantization=["8da8w"]), "'quantization' must be a mapping"),
    (_with(RECIPE, tolerance=0.1), "recipe key 'tolerance' must be a mapping"),
    (_with(RECIPE, tolerance={"max_abs_logit_diff": float("nan")}), "'max_abs_logit_diff' must be a finite number"),
    (_with(RECIPE, tolerance={"min_sequence_match": 2}), "'min_sequence_match' must be <= 1"),
    (_with(RECIPE, tolerance={"max_accuracy_drop": -1}), "'max_accuracy_drop' must be >= 0"),
    (_with(RECIPE, tolerance={"max_logit_diff": 1}), "unknown tolerance key 'max_logit_diff'"),
    (_with(RECIPE, encode_lengths=16), "'encode_lengths' must be a list of integers"),
    (_with(RECIPE, encode_lengths=[4, "x"]), "'encode_lengths' must be a list of integers"),
    (_with(RECIPE, encode_lengths=[6, 4]), "'encode_lengths' must be at most 8 increasing lengths"),
    (_with(RECIPE, encode_lengths=[8]), "'encode_lengths' must be at most 8 increasing lengths"),
    (_with(RECIPE, cross_attention="memroy"), "'cross_attention' must be one of kv, memory, got 'memroy'"),
    (_with(RECIPE, cross_attention=True), "'cross_attention' must be"),
]
BAD_TARGETS = [
    (_with(TARGET, runtime="tensorrt"), "'runtime' must be one of"),
    (_with(TARGET, threads=0), "'threads' must be between 1 and 256"),
    (_with(TARGET, threads="two"), "'threads' must be an integer"),
    (_with(TARGET, backend=None), "missing required target key 'backend'"),
    (_with(TARGET, device="phone"), "unknown target key 'device'"),
    (_with(TARGET, name="a/b"), "'name' must be letters, digits"),
    (b"name: \xff\xfe\n", "not UTF-8 text"),
]


@pytest.mark.parametrize("text,needle", BAD_RECIPES, ids=[n for _, n in BAD_RECIPES])
def test_bad_recipe(text, needle, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    refused(invoke("export", DEMO, "-t", "executorch-xnnpack", "-r", p, "-o", tmp_path / "a"), needle, "specs")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("text,needle", BAD_TARGETS, ids=[n for _, n in BAD_TARGETS])
def test_bad_target(text, needle, tmp_path):
    p = tmp_path / "t.yaml"
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    refused(invoke("export", DEMO, "-t", p, "-o", tmp_path / "a"), needle, "specs")


def test_unknown_names(tmp_path):
    refused(invoke("export", DEMO, "-t", "nope", "-o", tmp_path / "a"), "unknown target 'nope'", "specs")
    refused(invoke("export", DEMO, "-t", "executorch-xnnpack", "-r", "nope", "-o", tmp_path / "a"),
            "unknown recipe 'nope'", "specs")
    refused(invoke("export", DEMO, "-t", "x" * 5000, "-o", tmp_path / "a"), "unknown target", "specs")
    refused(invoke("export", DEMO, "-t", "executorch-xnnpack", "-r", "missing.yaml", "-o", tmp_path / "a"),
            "recipe file not found", "specs")


def _matrix_dir(tmp_path: Path) -> Path:
    (tmp_path / "ck").mkdir(exist_ok=True)
    (tmp_path / "r.yaml").write_text(_with(RECIPE))
    return tmp_path / "m.yaml"


BAD_MATRICES = [
    (_with(MATRIX, foo=1), "unknown matrix key 'foo'"),
    (_with(MATRIX, checkpoints="ck"), "matrix key 'checkpoints' must be a non-empty list"),
    (_with(MATRIX, checkpoints=[]), "matrix key 'checkpoints' must be a non-empty list"),
    (_with(MATRIX, checkpoints=["nope"]), "matrix key 'checkpoints': checkpoint not found: 'nope'"),
    (_with(MATRIX, recipes=["fp33"]), "matrix key 'recipes': unknown recipe 'fp33'"),
    (_with(MATRIX, targets=["executorch-xnnpak"]), "matrix key 'targets': unknown target 'executorch-xnnpak'"),
    (_with(MATRIX, targets=None), "matrix key 'targets' must be a non-empty list"),
    (_with(MATRIX, exclude=[{"recipe": 1}]), "matrix key 'exclude' must be a list"),
    (_with(MATRIX, exclude={"recipe": "fp32"}), "matrix key 'exclude' must be a list"),
    (_with(MATRIX, thresholds={"max_speedup": 1}), "unknown thresholds key 'max_speedup'"),
    (_with(MATRIX, thresholds={"max_slowdown_pct": float("inf")}), "'thresholds.max_slowdown_pct' must be a finite"),
    (_with(MATRIX, thresholds={"max_accuracy_drop": -0.1}), "'thresholds.max_accuracy_drop' must be a finite"),
    (_with(MATRIX, thresholds=[1]), "matrix key 'thresholds' must be a mapping"),
    (_with(MATRIX, verify_limit=True), "matrix key 'verify_limit' must be a positive integer"),
    (_with(MATRIX, probe_runs=0), "matrix key 'probe_runs' must be a positive integer"),
    (_with(MATRIX, format_version=2), "format_version 2 is newer than this tool"),
    (_with(MATRIX) + "recipes: [int8]\n", "duplicate key 'recipes'"),
    ("checkpoints: [ck\n", "invalid YAML"),
]


@pytest.mark.parametrize("text,needle", BAD_MATRICES, ids=[n for _, n in BAD_MATRICES])
def test_bad_matrix(text, needle, tmp_path):
    m = _matrix_dir(tmp_path)
    m.write_text(text)
    refused(invoke("build", m, "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache"), needle, "specs")
    assert not (tmp_path / "cache").exists()  # nothing ran


def _fuzz_one(load, path: Path, doc, touched: set, section: str):
    """Fuzz property: the loader accepts the document, or says in one line which key is wrong."""
    BAD_INPUTS[section] += 1
    path.write_text(_yaml(doc))
    try:
        obj = load(str(path))
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 600, msg
        head = msg.split("; allowed")[0].split("; known")[0].split("; available")[0]
        if isinstance(doc, dict):
            assert any(name in head for name in touched), (msg, touched)
        else:
            assert "must be a YAML mapping" in msg
        return None
    return obj


@FUZZ
@given(case=mutated(RECIPE))
def test_fuzzed_recipe(case, tmp_path_factory):
    from toolchain.specs import load_recipe, recipe_from_dict

    r = _fuzz_one(load_recipe, tmp_path_factory.getbasetemp() / "fuzz-recipe.yaml", *case, "specs fuzzed")
    if r is not None:  # accepted: it serializes into a manifest and back unchanged
        assert recipe_from_dict(r.to_dict()) == r


@FUZZ
@given(case=mutated(TARGET))
def test_fuzzed_target(case, tmp_path_factory):
    from toolchain.specs import load_target, target_from_dict

    t = _fuzz_one(load_target, tmp_path_factory.getbasetemp() / "fuzz-target.yaml", *case, "specs fuzzed")
    if t is not None:
        assert target_from_dict(t.to_dict()) == t


@FUZZ
@given(case=mutated(MATRIX))
def test_fuzzed_matrix(case, tmp_path_factory):
    from toolchain.build import load_matrix

    d = tmp_path_factory.getbasetemp() / "fuzz-matrix"
    d.mkdir(exist_ok=True)
    _fuzz_one(load_matrix, _matrix_dir(d), *case, "specs fuzzed")


@FUZZ
@given(text=YAML_TEXT)
def test_fuzzed_yaml_syntax(text, tmp_path_factory):
    """Any bytes at all as a recipe, target or matrix: accepted, or one line (file and line)."""
    from toolchain.build import load_matrix
    from toolchain.specs import load_recipe, load_target

    d = tmp_path_factory.getbasetemp() / "fuzz-syntax"
    d.mkdir(exist_ok=True)
    p = _matrix_dir(d).with_name("x.yaml")
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text, encoding="utf-8")
    for load in (load_recipe, load_target, load_matrix):
        BAD_INPUTS["specs fuzzed"] += 1
        try:
            load(str(p))
        except InputError as e:
            assert "\n" not in str(e) and str(p) in str(e), str(e)


SHIPPED = sorted([*(ROOT / "recipes").glob("*.yaml"), *(ROOT / "targets").glob("*.yaml"),
                  ROOT / "examples" / "ci" / "matrix.yaml"])


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.name}" for p in SHIPPED])
def test_shipped_yaml_schema(path):
    """Every shipped YAML passes the strict loader (no unknown or duplicate keys, types, ranges);
    recipes and targets are named after their file; targets name a registered runtime."""
    from toolchain import backends
    from toolchain.build import load_matrix
    from toolchain.specs import load_recipe, load_target

    if path.parent.name == "recipes":
        r = load_recipe(path.stem)
        assert r.name == path.stem and r.description
    elif path.parent.name == "targets":
        t = load_target(path.stem)
        assert t.name == path.stem and t.description
        assert type(backends.for_target(t)).__module__.startswith("toolchain.backends.")
    else:
        m = load_matrix(path)  # also loads every recipe and target it names
        assert m.checkpoints and m.recipes and m.targets


def test_recipes_and_targets_list():
    for cmd, needle in (("recipes", "fp32"), ("targets", "executorch-xnnpack")):
        result = invoke(cmd)
        assert result.exit_code == 0 and needle in result.output


# ---------------------------------------------------------------------------------------------
# 3. Inputs at run time.
# ---------------------------------------------------------------------------------------------

RUN_CASES = [
    (["   "], "empty input"),
    ([""], "empty input"),
    (["x" * 40], "the artifact's recipe allows 24 (max_input_len); shorten it or pass --truncate"),
    (["2021-03-03 日付 ☃"], "characters the tokenizer does not know: '日', '付', '☃'"),
    (["abc", "--max-new-tokens", "99"], "--max-new-tokens 99 exceeds the artifact's cache of 12"),
    (["abc", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["abc", "--min-new-tokens", "20"], "--min-new-tokens must be between 0 and 12"),
    (["abc", "--min-new-tokens", "-1"], "--min-new-tokens must be between 0 and 12"),
    (["abc", "--threads", "0"], "--threads must be >= 1"),
    (["abc", "--max-new-tokens", "many"], "Invalid value for '--max-new-tokens'"),
    # A language/task on a text artifact (Whisper's cases: tests/test_whisper_language.py).
    (["abc", "--language", "fr"], "--language: this artifact has no language/task prompt to choose"),
    (["abc", "--task", "translate"], "--task: this artifact has no language/task prompt to choose"),
    (["abc", "--task", "summarize"], "Invalid value for '--task'"),
]


@pytest.mark.parametrize("args,needle", RUN_CASES, ids=[n for _, n in RUN_CASES])
def test_bad_run_input(args, needle, artifact):
    refused(invoke("run", artifact, *args), needle, "run time")


def test_explicit_flags_accept_what_is_refused_by_default(artifact):
    """--truncate and --allow-unknown are the only ways past those refusals."""
    for args in (["x" * 40, "--truncate"], ["2021 日付", "--allow-unknown"]):
        result = invoke("run", artifact, *args)
        assert result.exit_code == 0, result.output


def test_output_stops_at_the_cache_with_a_note(artifact):
    """EOS suppressed for all 12 steps: stdout is only the text, stderr says it was cut at the cache."""
    result = invoke("run", artifact, "abc", "--min-new-tokens", "12")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and "note: stopped at the artifact's cache size (12 tokens" in result.stderr


BAD_PROBE_OPTIONS = [
    (["--output-len", "99"], "--output-len must be between 1 and 12"),
    (["--input-len", "0"], "--input-len must be between 1 and 24"),
    (["--runs", "0"], "--runs must be >= 1"),
    (["--threads", "-2"], "--threads must be >= 1"),
    (["--device", "ftp://x"], "--device 'ftp://x': use 'local', qemu-aarch64 or ssh://"),
]


@pytest.mark.parametrize("args,needle", BAD_PROBE_OPTIONS, ids=[a[0] for a, _ in BAD_PROBE_OPTIONS])
def test_bad_probe_options(args, needle, artifact):
    refused(invoke("probe", artifact, *args), needle, "run time")


def test_bad_verify_options(artifact, tmp_path):
    refused(invoke("verify", artifact, "--limit", "0"), "Invalid value for '--limit'", "run time")
    refused(invoke("verify", artifact, "--language", "en"), "--language: this artifact has no language/task prompt",
            "run time")
    (tmp_path / "e.jsonl").write_text('{"input": "a"}\n{"inp')
    refused(invoke("verify", artifact, "--eval", tmp_path / "e.jsonl"), "e.jsonl:2: invalid JSON", "run time")


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


@FUZZ
@given(text=st.text(max_size=40), truncate=st.booleans())
def test_fuzzed_text_input(text, truncate, tokenizer):
    """Any text: ids the artifact can take (<= max_input_len, no unknown token), or one line."""
    from toolchain.generate import tokenize

    BAD_INPUTS["run time fuzzed"] += 1
    try:
        ids = tokenize(tokenizer, text, 24, truncate=truncate, allow_unknown=False)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert 1 <= len(ids) <= 24 and tokenizer.token_to_id("<unk>") not in ids
    assert truncate or tokenizer.encode(text).ids == ids


@FUZZ
@given(cache=st.integers(1, 16), max_new=st.one_of(st.none(), st.integers(-2, 20)), min_new=st.integers(-2, 20),
       eos_at=st.one_of(st.none(), st.integers(0, 20)))
def test_generation_never_decodes_past_the_cache(cache, max_new, min_new, eos_at):
    from toolchain.generate import check_new_tokens, greedy

    BAD_INPUTS["run time fuzzed"] += 1
    session = Recorder(vocab=10, eos_id=1, eos_at=eos_at)
    try:
        limit = check_new_tokens(max_new, cache, min_new)
    except InputError as e:
        assert "\n" not in str(e) and not session.positions
        return
    gen = greedy(session, [5, 1], max_input_len=4, max_output_len=cache, start_id=0, eos_id=1, pad_id=0,
                 max_new_tokens=max_new, min_new_tokens=min_new)
    assert session.positions == list(range(len(session.positions))) and max(session.positions) < cache
    assert len(gen.tokens) <= limit and (gen.stopped != "cache" or len(gen.tokens) == cache)
    with pytest.raises(InputError, match="exceeds the artifact's cache"):
        greedy(session, [5, 1], max_input_len=4, max_output_len=cache, start_id=0, eos_id=1, pad_id=0,
               max_new_tokens=cache + 1)


# ---------------------------------------------------------------------------------------------
# 4. Artifacts: run/verify/probe/inspect refuse anything they did not make; exports are atomic.
# ---------------------------------------------------------------------------------------------


TAMPER_CASES = {
    "model file modified": (lambda a: flip_a_bit(a / "model.pte"), "model.pte: sha256 does not match the manifest"),
    "weights truncated": (lambda a: truncate(a / "weights.ptd", 0.9), "weights.ptd: sha256 does not match"),
    "weights deleted": (lambda a: (a / "weights.ptd").unlink(), "weights.ptd: missing (listed in the manifest)"),
    "tokenizer edited": (lambda a: (a / "tokenizer.json").write_text((a / "tokenizer.json").read_text() + " "),
                         "tokenizer.json: sha256 does not match"),
    "manifest not JSON": (lambda a: (a / "manifest.json").write_text('{"format_version": 1,'), "invalid JSON"),
    "manifest not an object": (lambda a: (a / "manifest.json").write_text("[]"), "expected a JSON object"),
    "newer format_version": (lambda a: edit_manifest(a, lambda m: m.update(format_version=FORMAT_VERSION + 1)),
                             f"format_version {FORMAT_VERSION + 1} is newer than this tool"),
    "no format_version": (lambda a: edit_manifest(a, lambda m: m.pop("format_version")), "missing format_version"),
    "no files list": (lambda a: edit_manifest(a, lambda m: m.pop("files")), "missing key 'files'"),
    "file outside the artifact": (lambda a: edit_manifest(a, lambda m: m["files"].update(
        {"../x": m["files"]["tokenizer.json"]})), "'../x' is not a plain path inside the artifact"),
    "program file not listed": (unlisted_program, "'evil.pte' is not a file listed (and hashed) in the manifest"),
    "tokenizer not listed": (lambda a: edit_manifest(a, lambda m: m["tokens"].update(tokenizer="other.json")),
                             "tokenizer 'other.json' is not a file listed"),
    "bad hash entry": (lambda a: edit_manifest(a, lambda m: m["files"]["model.pte"].update(sha256="x")),
                       "'model.pte' needs a sha256"),
    "recipe in the manifest invalid": (lambda a: edit_manifest(a, lambda m: m["recipe"].update(max_input_len="24")),
                                       "'max_input_len' must be an integer"),
    "no manifest": (lambda a: (a / "manifest.json").unlink(), "not an artifact (no manifest.json)"),
}


@pytest.mark.parametrize("case", list(TAMPER_CASES))
def test_tampered_artifact_is_refused(case, artifact, tmp_path):
    change, needle = TAMPER_CASES[case]
    a = tmp_path / "a"
    shutil.copytree(artifact, a)
    change(a)
    commands = [("run", a, "abc"), ("verify", a), ("probe", a, "--runs", "1")]
    if case != "no manifest":  # without a manifest, inspect looks at it as a checkpoint
        commands.append(("inspect", a))
    for cmd in commands:
        refused(invoke(*cmd), needle, "artifacts")


def test_existing_output_needs_force(artifact, checkpoint):
    refused(invoke("export", checkpoint, "-t", "executorch-xnnpack", "-o", artifact),
            "already exists; pass --force to replace it", "artifacts")
    open_artifact(artifact)


@pytest.mark.slow
def test_export_killed_at_random_points_leaves_no_partial_artifact(checkpoint, small_recipe, tmp_path):
    """Four exports in real processes, each sent a signal at a random (seeded) moment: SIGKILL,
    SIGTERM and SIGINT 0-2 s after its staging dir appears (inside lowering), SIGKILL 1-3 s after
    start (loading). Afterwards each output is absent or complete (if the export won the race),
    SIGTERM and SIGINT have removed their staging dir, and the next export to a SIGKILLed
    output succeeds and removes what the killed one left."""
    rng = random.Random(13)
    runs = []
    for i, (sig, phase) in enumerate([(signal.SIGKILL, "lowering"), (signal.SIGTERM, "lowering"),
                                      (signal.SIGINT, "lowering"), (signal.SIGKILL, "loading")]):
        out = tmp_path / f"a{i}"
        cmd = [sys.executable, "-m", "toolchain.cli", "export", str(checkpoint), "-t", "executorch-xnnpack",
               "-r", str(small_recipe), "-o", str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
        runs.append({"sig": sig, "phase": phase, "out": out, "proc": proc, "delay": rng.uniform(0.0, 2.0),
                     "start": time.time(), "staged": None, "sent": False})
    deadline = time.time() + 600
    while any(r["proc"].poll() is None for r in runs) and time.time() < deadline:
        for r in (r for r in runs if r["proc"].poll() is None and not r["sent"]):
            now = time.time()
            if r["staged"] is None and list(tmp_path.glob(f".{r['out'].name}.tmp-*")):
                r["staged"] = now
            anchor = r["start"] + 1.0 if r["phase"] == "loading" else r["staged"]
            if anchor is not None and now >= anchor + r["delay"]:
                r["proc"].send_signal(r["sig"])
                r["sent"] = True
        time.sleep(0.02)
    for r in runs:
        r["proc"].wait(timeout=120)
        BAD_INPUTS["artifacts"] += 1
        if r["out"].exists():
            open_artifact(r["out"])  # the export finished first: then the artifact is whole
        stale = list(tmp_path.glob(f".{r['out'].name}.tmp-*"))
        if r["sig"] != signal.SIGKILL:
            assert not stale, (r, stale)
        elif stale or r["phase"] == "lowering":
            force = ["--force"] if r["out"].exists() else []
            result = invoke("export", checkpoint, "-t", "executorch-xnnpack", "-r", small_recipe, "-o", r["out"],
                            *force)
            assert result.exit_code == 0, result.output
            open_artifact(r["out"])
    assert not leftovers(tmp_path), leftovers(tmp_path)


def test_force_replace_never_loses_the_old_artifact(artifact, tmp_path, monkeypatch):
    """--force moves the old artifact aside, renames the new one in, then deletes the old one. If
    the second rename fails the old one is put back; if the process died between the two renames
    the next command that looks for it puts it back."""
    import toolchain.artifact as am

    out = tmp_path / "a"
    shutil.copytree(artifact, out)
    before = (out / "manifest.json").read_text()
    real = os.replace

    def replace(src, dst):  # the disk fills up at the rename that swaps the new artifact in
        return enospc() if ".tmp-" in Path(src).name else real(src, dst)

    monkeypatch.setattr(am.os, "replace", replace)
    library_refuses(lambda: _stage(out, force=True), "No space left on device (nothing was written)", "artifacts")
    monkeypatch.setattr(am.os, "replace", real)
    assert (out / "manifest.json").read_text() == before and not leftovers(tmp_path)
    open_artifact(out)

    # The state a SIGKILL between the two renames leaves: no `a`, the old one aside, a dead pid.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".a.old-{dead.pid}-x"
    aside.mkdir()
    os.replace(out, aside / "a")
    (tmp_path / f".a.tmp-{dead.pid}-y").mkdir()
    BAD_INPUTS["artifacts"] += 1
    open_artifact(out)  # put back, hashes intact
    assert (out / "manifest.json").read_text() == before and not leftovers(tmp_path)


def _stage(out: Path, force: bool) -> None:
    with staging_dir(out, force) as tmp:
        (tmp / "model.pte").write_bytes(b"new")


# ---------------------------------------------------------------------------------------------
# 5. Resources: disk full or read-only output, at every write of an export.
# ---------------------------------------------------------------------------------------------


WRITE_FAULTS = {  # where the disk fills up -> what to patch
    "writing the model file": lambda mp, be: mp.setattr(be, "lower", fake_lower(True)),
    "copying the tokenizer": lambda mp, be: mp.setattr("toolchain.tokenizer.shutil.copyfile", enospc),
    "writing the manifest": lambda mp, be: mp.setattr("toolchain.artifact.Path.write_text", enospc),
    "renaming into place": lambda mp, be: mp.setattr("toolchain.artifact._swap_in", enospc),
}


@pytest.mark.parametrize("where", list(WRITE_FAULTS))
def test_disk_full_during_export(where, artifact, checkpoint, small_recipe, tmp_path, monkeypatch):
    """ENOSPC at each write: one line naming the output, no staging dir left, an existing artifact
    replaced with --force is untouched. (Fault injection: a full disk cannot be made portably.)"""
    from toolchain import backends
    from toolchain.specs import load_target

    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    before = (old / "manifest.json").read_text()
    be = backends.for_target(load_target("executorch-xnnpack"))
    monkeypatch.setattr(be, "lower", fake_lower(False))
    WRITE_FAULTS[where](monkeypatch, be)
    for out, extra in ((tmp_path / "new", []), (old, ["--force"])):
        result = invoke("export", checkpoint, "-t", "executorch-xnnpack", "-r", small_recipe, "-o", out,
                        *extra)
        refused(result, f"cannot write artifact {out}: No space left on device (nothing was written)", "resources")
    assert not (tmp_path / "new").exists() and not leftovers(tmp_path)
    assert (old / "manifest.json").read_text() == before


def test_read_only_output_directory(checkpoint, small_recipe, tmp_path, monkeypatch):
    """EROFS when the staging dir is created: one line naming the directory, nothing created."""
    monkeypatch.setattr("toolchain.artifact.tempfile", SimpleNamespace(mkdtemp=erofs))
    refused(invoke("export", checkpoint, "-t", "executorch-xnnpack", "-r", small_recipe,
                   "-o", tmp_path / "ro" / "a"), "Read-only file system", "resources")
    assert not (tmp_path / "ro" / "a").exists() and not leftovers(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions; "
                                               "test_read_only_output_directory injects EROFS instead")
def test_read_only_output_directory_for_real(checkpoint, small_recipe, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(invoke("export", checkpoint, "-t", "executorch-xnnpack", "-r", small_recipe,
                       "-o", ro / "a"), "Permission denied", "resources")
        assert not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_disk_full_when_recording_a_result(artifact, tmp_path, monkeypatch):
    """verify records its result in the manifest atomically: on ENOSPC the manifest is unchanged,
    no temp file is left, and the error is one line."""
    a = tmp_path / "a"
    shutil.copytree(artifact, a)
    before = (a / "manifest.json").read_text()
    art = open_artifact(a)

    def half_then_full(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        enospc()

    monkeypatch.setattr("toolchain.artifact.Path.write_text", half_then_full)
    library_refuses(lambda: art.update("verify", {"passed": True}), "No space left on device", "resources")
    monkeypatch.undo()
    assert (a / "manifest.json").read_text() == before and not leftovers(tmp_path)
    open_artifact(a)


def test_resource_errors_anywhere_are_one_line(tmp_path, monkeypatch):
    """Disk full, read-only or forbidden paths raised from anywhere become `error: FILE: reason`."""
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES):
        def boom(*args, code=code):
            raise OSError(code, os.strerror(code), str(tmp_path / "f"))

        monkeypatch.setattr("toolchain.inspection.inspect_path", boom)
        refused(invoke("inspect", tmp_path), f"{tmp_path / 'f'}: {os.strerror(code)}", "resources")


# ---------------------------------------------------------------------------------------------
# 6. Concurrency: builds share a cache safely (a file lock per cache entry).
# ---------------------------------------------------------------------------------------------


def _one_cell_matrix(tmp_path: Path, checkpoint) -> Path:
    shutil.copytree(checkpoint, tmp_path / "ck")
    (tmp_path / "small.yaml").write_text(
        "format_version: 1\nname: small\ndescription: t\nmax_input_len: 24\nmax_output_len: 12\n"
        "tolerance: {max_abs_logit_diff: 1.0e+9, min_sequence_match: 0.0, max_accuracy_drop: 1.0}\n")
    m = tmp_path / "matrix.yaml"
    m.write_text("format_version: 1\ncheckpoints: [ck]\nrecipes: [small.yaml]\ntargets: [executorch-xnnpack]\n"
                 "probe_runs: 1\nverify_limit: 1\n")
    return m


@pytest.mark.slow
def test_two_builds_on_one_cache(checkpoint, tmp_path):
    """A build process and an in-process build, same matrix, cache and output, at the same time:
    one builds the cell, the other waits on the entry's lock and reuses it; both end with a
    hash-checked artifact and the cache holds exactly one intact entry."""
    from toolchain.build import build
    from toolchain.cache import read_results

    matrix, out, cache = _one_cell_matrix(tmp_path, checkpoint), tmp_path / "out", tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "build", str(matrix), "-o", str(out),
                             "--cache-dir", str(cache), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    here: dict = {}
    thread = threading.Thread(target=lambda: here.update(build(str(matrix), str(out), str(cache), 1, None)))
    thread.start()
    stdout, _ = proc.communicate(timeout=900)
    thread.join(timeout=900)
    BAD_INPUTS["concurrency"] += 1
    assert proc.returncode == 0, stdout
    there = json.loads(stdout[stdout.index("{\n"):])
    cells = [here["cells"][0], there["cells"][0]]
    assert [c["status"] for c in cells] == ["ok", "ok"], cells
    assert sorted(c["cache_hit"] for c in cells) == [False, True], cells
    key = next(p.name for p in cache.iterdir() if p.is_dir())
    assert sorted(p.name for p in cache.iterdir()) == [key, f"{key}.lock"]
    assert read_results(cache / key) is not None  # the entry's artifact passes its hash check
    open_artifact(out / "ck" / "executorch-xnnpack" / "small")
    assert not leftovers(out) and not leftovers(cache)


def test_failed_cell_leaves_no_cache_entry(artifact, checkpoint, tmp_path, monkeypatch):
    """A cell that fails half-way (here: disk full during verify) leaves no entry or temp dir."""
    from toolchain.build import run_cell

    matrix = _one_cell_matrix(tmp_path, checkpoint)

    def fake_export(source, recipe, target, out, force=False):
        shutil.copytree(artifact, out)
        return open_artifact(out)

    monkeypatch.setattr("toolchain.export.export", fake_export)
    monkeypatch.setattr("toolchain.verify.verify", enospc)
    cache = tmp_path / "cache"
    row = run_cell(str(tmp_path / "ck"), str(matrix.with_name("small.yaml")), "executorch-xnnpack",
                   str(tmp_path / "out"), str(cache), 1, 1)
    BAD_INPUTS["concurrency"] += 1
    assert row["status"] == "failed" and "No space left on device" in row["error"]
    assert [p.suffix for p in cache.iterdir()] == [".lock"]
