"""The native runner (runtime/, C++ over the ExecuTorch wheel): built from nothing here, the same
tokens and logits as the Python Session (decoding rules included), `run`/`verify`/`probe
--runner native`, and one-line refusals of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.testing import assert_allclose

from toolchain import backends, native
from toolchain.artifact import open_artifact
from toolchain.cli import main
from toolchain.errors import InputError
from toolchain.generate import decoding, greedy
from toolchain.report import REQUIRED

pytestmark = pytest.mark.slow  # builds the native runner and exports

TOL = {"atol": 1e-5, "rtol": 1e-5}  # the same program and kernels: only threading noise


@pytest.fixture(scope="session")
def runner_bin():
    """edgeseq-runner for the host, built (incrementally) into build/runner-host."""
    try:
        return native.build("host")
    except InputError as e:
        if "no C++ compiler" in str(e) or "cmake not found" in str(e):
            pytest.skip(f"native runner not buildable here: {e}")
        raise


def _sessions(path):
    art = open_artifact(path)
    return art, backends.for_target(art.target).open_session(art, threads=2), native.open_session(art, threads=2)


def _inputs(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(3, 45, size=int(k) - 1)] + [1] for k in rng.integers(2, 25, size=n)]


def test_build_from_the_wheel(runner_bin):
    assert runner_bin.is_file() and runner_bin.parent.name == "runner-host"
    out = subprocess.run([runner_bin, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: edgeseq-runner" in out.stdout


@pytest.mark.parametrize("which", ["fp32", "int8-embeddings+encode_8"])
def test_same_tokens_and_logits_as_python_session(runner_bin, artifact, int8_embeddings_artifact, which):
    art, py, nat = _sessions(artifact if which == "fp32" else int8_embeddings_artifact)
    kw = decoding(art.manifest["tokens"])
    r = art.recipe
    try:
        for ids in _inputs(6, seed=3) + [[5, 1], list(range(3, 26)) + [1]]:
            a = greedy(py, ids, max_input_len=r.max_input_len, max_output_len=r.max_output_len, keep_logits=True, **kw)
            b = greedy(nat, ids, max_input_len=r.max_input_len, max_output_len=r.max_output_len, keep_logits=True, **kw)
            assert b.tokens == a.tokens and b.stopped == a.stopped
            assert nat.encode_length == py.encode_length
            assert_allclose(np.stack(b.logits), np.stack(a.logits), **TOL)
    finally:
        nat.close()
    if which != "fp32":
        assert [e["length"] for e in art.manifest["programs"]["encode"]["lengths"]] == [8]
        assert "quantized_decomposed::embedding_byte" in art.manifest["delegation"]["decode"]["runtime_ops"]


def test_decoding_rules_mirror_greedy(runner_bin, artifact):
    """Every rule generate.greedy applies (forced prompt with a language slot, suppress,
    begin-suppress, min_new_tokens, forced EOS, max_new_tokens, force_length), against the Python loop."""
    art, py, nat = _sessions(artifact)
    base = decoding(art.manifest["tokens"])
    cases = [
        dict(prompt=[7, None], language_ids=[20, 21, 22, 23]),
        dict(suppress=[11, 12, 13, 14, 15], begin_suppress=[1, 16, 17]),
        dict(forced_eos=1, max_new_tokens=4),
        dict(min_new_tokens=9),
        dict(force_length=True, max_new_tokens=10),
        dict(prompt=[None], language_ids=[30, 31], suppress=[2, 3], forced_eos=1, min_new_tokens=2),
    ]
    try:
        for i, case in enumerate(cases):
            kw = {**base, **case}
            for ids in _inputs(3, seed=10 + i):
                a = greedy(py, ids, max_input_len=24, max_output_len=12, keep_logits=True, **kw)
                b = greedy(nat, ids, max_input_len=24, max_output_len=12, keep_logits=True, **kw)
                assert (b.tokens, b.prompt, b.stopped) == (a.tokens, a.prompt, a.stopped), case
                assert_allclose(np.stack(b.logits), np.stack(a.logits), **TOL)
    finally:
        nat.close()


def invoke(*args):
    """(exit code, stdout on success / stderr on failure): progress lines on stderr stay apart."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout if res.exit_code == 0 else res.stderr


def test_cli_run_verify_probe_native(runner_bin, demo_artifact):
    assert invoke("run", demo_artifact, "March 3, 2021", "--runner", "native") == (0, "2021-03-03\n")
    code, out = invoke("verify", demo_artifact, "--runner", "native", "--limit", "20", "--json")
    assert code == 0, out
    rep = json.loads(out)
    assert rep["sequence_match"] == 1.0 and rep["max_abs_logit_diff"] < 1e-3 and "native runner" in rep["runtime"]
    code, out = invoke("probe", demo_artifact, "--runner", "native", "--runs", "3", "--warmup", "1",
                       "--output-len", "8", "--json")
    assert code == 0, out
    r = json.loads(out)
    for key in REQUIRED + ("ttft_ms", "input_len", "output_len", "environment", "encoder_len"):
        assert key in r, key
    assert r["runner"] == "native" and r["kind"] == "measured" and r["output_len"] == 8
    assert 0 < r["decode_ms_per_token"]["p50"] <= r["decode_ms_per_token"]["p90"]
    assert 0 < r["peak_rss_mb"] < 200 and r["load_ms"] > 0 and r["environment"]["threads"] == 2


def _request(path, **overrides) -> dict:
    art = open_artifact(path, check_hashes=False)  # the runner's own checks are under test
    req = native.base_request(art)
    req.update(ids=[5, 6, 7, 1], threads=2)
    req.update(overrides)
    return req


def _run(binary, req, tmp_path, *extra):
    p = tmp_path / "req.json"
    p.write_text(req if isinstance(req, str) else json.dumps(req))
    return subprocess.run([binary, p, *extra], capture_output=True, text=True, timeout=60)


def _one_line_error(proc, *words):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.returncode in (2, 3), proc.returncode  # never a signal / abort
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_runner_accepts_good_request(runner_bin, artifact, tmp_path):
    proc = _run(runner_bin, _request(artifact), tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no ExecuTorch log lines
    out = json.loads(proc.stdout)
    assert out["encoder_len"] == 24 and len(out["step_ms"]) >= 1


def test_bad_weights_are_one_line_errors(runner_bin, artifact, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(artifact, art)
    ptd = art / "weights.ptd"
    data = bytearray(ptd.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside a weight: loads fine, so only the hash catches it
    ptd.write_bytes(bytes(data))
    _one_line_error(_run(runner_bin, _request(art), tmp_path), "sha256", "weights.ptd")
    req = _request(art)
    req.pop("sha256")
    ptd.write_bytes(bytes(data[:200]))  # truncated, no hash to check: the loader refuses it
    _one_line_error(_run(runner_bin, req, tmp_path), "cannot load")
    ptd.unlink()
    _one_line_error(_run(runner_bin, _request(art), tmp_path), "weights.ptd")
    # Through the CLI: the Python side refuses a modified artifact before starting the runner.
    code, out = invoke("run", art, "March 3", "--runner", "native")
    assert code == 2 and len(out.strip().splitlines()) == 1 and "weights.ptd" in out


@pytest.mark.parametrize("change, words", [
    (dict(decode={"method": "decode_v2"}), ["no method", "decode_v2", "encode"]),
    (dict(encode={"method": "encode", "inputs": ["input_ids", "attention_mask"],
                  "lengths": [{"length": 8, "method": "encode_8"}]}), ["no method", "encode_8"]),
    (dict(ids=[5, 99999, 1]), ["outside the vocabulary"]),
    (dict(ids=[-3, 1]), ["outside the vocabulary"]),
    (dict(ids=[1.5, 2]), ["integer"]),
    (dict(ids="garbage"), ["list"]),
    (dict(ids=list(range(3, 40))), ["at most 24"]),
    (dict(ids=[]), ["empty"]),
    (dict(max_new_tokens=99), ["max_new_tokens"]),
    (dict(features="/nonexistent.f32"), ["exactly one"]),
    (dict(program="/nonexistent/model.pte", sha256={}), ["cannot read"]),
    (dict(tokens={"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
                  "suppress_tokens": [4000]}), ["suppress token"]),
])
def test_bad_requests_are_one_line_errors(runner_bin, artifact, tmp_path, change, words):
    _one_line_error(_run(runner_bin, _request(artifact, **change), tmp_path), *words)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"program": 3}', "{\"a\": tru}", "\x00\xff"])
def test_malformed_request_is_one_line_error(runner_bin, tmp_path, text):
    _one_line_error(_run(runner_bin, text, tmp_path))


def test_bad_flags_are_one_line_errors(runner_bin, artifact, tmp_path):
    _one_line_error(_run(runner_bin, _request(artifact), tmp_path, "--runs", "x"), "--runs")
    _one_line_error(_run(runner_bin, _request(artifact), tmp_path, "--bogus"), "unknown option")
    _one_line_error(subprocess.run([runner_bin], capture_output=True, text=True), "usage")


def test_serve_mode_keeps_going_after_a_bad_request(runner_bin, artifact):
    good, bad = _request(artifact), _request(artifact, ids=[5, 4000])
    lines = "\n".join(json.dumps(r) for r in (good, bad, good)) + "\n"
    proc = subprocess.run([runner_bin, "--serve"], input=lines, capture_output=True, text=True, timeout=60)
    outs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and proc.stderr == "" and len(outs) == 3
    assert outs[0]["ids"] == outs[2]["ids"] and outs[1]["code"] == 2 and "vocabulary" in outs[1]["error"]
    assert outs[0]["load_ms"] > 0 and outs[2]["load_ms"] == 0  # loaded once


def test_cli_unknown_device_is_one_line_error(runner_bin, artifact):
    code, out = invoke("run", artifact, "March 3", "--device", "android")
    assert code == 2 and len(out.strip().splitlines()) == 1 and "qemu-aarch64" in out, out
    code, out = invoke("run", artifact, "March 3", "--runner", "python", "--device", "qemu-aarch64")
    assert code == 2 and "native runner only" in out, out
