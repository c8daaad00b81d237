"""One row of the Whisper benchmark in its own process, driven over stdin/stdout by whisper.py.

    PYTHON benchmarks/whisper_rows.py '{"kind": "edgeseq" | "ctranslate2" | "faster-whisper", ...}'

PYTHON is the main venv's for edgeseq rows, the faster-whisper peer venv's (build/bench/
venv-faster-whisper: ctranslate2 + faster-whisper, no torch, no transformers) for the others,
so this module imports nothing but numpy at the top. Protocol as worker.py's: the row loads
and answers {"ready": ...} (or {"error": ...}); then per line on stdin "clip I" -> that clip's
transcript and timings, "rss" -> {"peak_rss_mb"}, "quit".

Every row reads the same input: the features file whisper.py wrote (edgeseq's numpy log-mel,
toolchain/audio.py, float32 [1, 80, 3000] per clip), except the faster-whisper rows, which
take the clip's WAV path and do everything themselves (audio decoding, their own log-mel,
CTranslate2), as a user calling `WhisperModel.transcribe` does.

Per clip (kinds edgeseq and ctranslate2), all greedy, no timestamps, English-only prompt
(<|startoftranscript|> <|notimestamps|>), 2 threads:
  natural: transcribe until EOS (at most `limit` tokens: the 64-position cache of the artifact
           minus the prompt) -> "text", "n_tokens", "natural_s" (features in, ids out);
  forced:  exactly `forced` tokens with EOS suppressed -> "ttft" (encode + the prompt + the
           first token), "encode_s", "tok" (mean seconds per later token), "gen_s" (the whole
           forced generation).
edgeseq times each step inside toolchain.generate.greedy (the code path of run/verify/probe).
CTranslate2's Whisper.generate has no per-token callback, so its rows time calls: encode()
alone, then generate() on the encoder output for 1 token (TTFT = encode + that) and for
`forced` tokens; tok = (forced call - 1-token call) / (forced - 1). That is faster-whisper's
own pipeline (it encodes once and passes the encoder output to generate). CTranslate2 caps
new tokens at max_length // 2 (openai-whisper's sample_len rule), so max_length = 2 x tokens.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker import peak_rss_mb  # noqa: E402

SOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|notimestamps|>"


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


class EdgeseqRow:
    """An edgeseq Whisper artifact through its runtime Session and toolchain.generate.greedy."""

    def __init__(self, spec: dict):
        from toolchain import backends
        from toolchain.artifact import open_artifact

        t0 = time.perf_counter()
        self.art = open_artifact(spec["path"])
        meta = self.art.meta
        self.session = backends.for_target(self.art.target).open_session(self.art, threads=spec["threads"])
        self.load_s = time.perf_counter() - t0
        self.tok = self.art.load_tokenizer()
        self.kw = meta.tokens.decoding()  # prompt [<|notimestamps|>], suppressions, start/eos ids
        self.recipe = meta.recipe
        self.n_prompt = len(self.kw["prompt"])
        self.limit = self.recipe.max_output_len - self.n_prompt
        self.forced = spec["forced"]
        self.features = np.load(spec["features"])
        self.mb = self.art.model_bytes / 1e6
        self.info = {"versions": {k: v for k, v in self.art.manifest["tool_versions"].items()
                                  if k in ("executorch", "torch", "torchao", "ai-edge-litert", "onnxruntime")},
                     "limit": self.limit}

    def _greedy(self, feats: np.ndarray, **kw):
        from toolchain.generate import greedy

        r = self.recipe
        return greedy(self.session, None, inputs=(feats,), max_input_len=r.max_input_len,
                      max_output_len=r.max_output_len, **self.kw, **kw)

    def clip(self, i: int) -> dict:
        feats = self.features[f"clip{i}"]
        t0 = time.perf_counter()
        g = self._greedy(feats)
        natural = time.perf_counter() - t0
        text = self.tok.decode(g.tokens, skip_special_tokens=True)
        f = self._greedy(feats, max_new_tokens=self.forced, force_length=True)
        first = self.n_prompt + 1  # steps up to and including the first generated token
        return {"text": text, "n_tokens": len(g.tokens), "natural_s": natural,
                "ttft": f.encode_s + sum(f.step_s[:first]), "encode_s": f.encode_s,
                "tok": sum(f.step_s[first:]) / max(len(f.step_s) - first, 1),
                "gen_s": f.encode_s + sum(f.step_s), "forced_tokens": len(f.tokens)}


class CTranslate2Row:
    """ctranslate2.models.Whisper on the CTranslate2 model directory, called directly."""

    def __init__(self, spec: dict):
        import ctranslate2
        from tokenizers import Tokenizer

        model_dir = Path(spec["path"])
        t0 = time.perf_counter()
        self.model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type=spec["compute_type"],
                                                intra_threads=spec["threads"], inter_threads=1)
        self.load_s = time.perf_counter() - t0
        self.ct2 = ctranslate2
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.eot = self.tokenizer.token_to_id("<|endoftext|>")
        self.prompt = [[SOT, NO_TIMESTAMPS]]
        self.limit, self.forced = spec["limit"], spec["forced"]
        self.features = np.load(spec["features"])
        self.mb = (model_dir / "model.bin").stat().st_size / 1e6
        self.info = {"versions": _versions("ctranslate2"), "compute_type": self.model.compute_type,
                     "supported_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
                     "limit": self.limit}

    def _generate(self, x, tokens: int, force: bool):
        # max_length counts CTranslate2's way: at most max_length // 2 new tokens (see the docstring).
        suppress = [-1, self.eot] if force else [-1]  # -1: the model's default suppressed set
        return self.model.generate(x, self.prompt, beam_size=1, max_length=2 * tokens, suppress_tokens=suppress,
                                   suppress_blank=True)[0]

    def clip(self, i: int) -> dict:
        sv = self.ct2.StorageView.from_array(np.ascontiguousarray(self.features[f"clip{i}"]))
        t0 = time.perf_counter()
        r = self._generate(sv, self.limit, force=False)
        natural = time.perf_counter() - t0
        ids = r.sequences_ids[0]
        t0 = time.perf_counter()
        enc = self.model.encode(sv, to_cpu=False)
        t1 = time.perf_counter()
        self._generate(enc, 1, force=True)
        t2 = time.perf_counter()
        f = self._generate(enc, self.forced, force=True)
        t3 = time.perf_counter()
        n = len(f.sequences_ids[0])
        return {"text": self.tokenizer.decode(ids, skip_special_tokens=True), "n_tokens": len(ids),
                "natural_s": natural, "ttft": t2 - t0, "encode_s": t1 - t0,
                "tok": ((t3 - t2) - (t2 - t1)) / max(n - 1, 1), "gen_s": (t1 - t0) + (t3 - t2), "forced_tokens": n}


class FasterWhisperRow:
    """faster-whisper's WhisperModel.transcribe, end to end: WAV path in, text out."""

    def __init__(self, spec: dict):
        from faster_whisper import WhisperModel

        t0 = time.perf_counter()
        self.model = WhisperModel(spec["path"], device="cpu", compute_type=spec["compute_type"],
                                  cpu_threads=spec["threads"], num_workers=1, local_files_only=True)
        self.load_s = time.perf_counter() - t0
        self.wavs, self.limit = spec["wavs"], spec["limit"]
        self.mb = (Path(spec["path"]) / "model.bin").stat().st_size / 1e6
        self.info = {"versions": _versions("faster-whisper", "ctranslate2", "av"),
                     "compute_type": self.model.model.compute_type, "limit": self.limit}

    def clip(self, i: int) -> dict:
        # Greedy, one temperature (no fallback), no timestamps, no VAD, no conditioning: the
        # decoding the other rows do. The generator runs the model while it is consumed.
        t0 = time.perf_counter()
        segments, _ = self.model.transcribe(self.wavs[i], language="en", task="transcribe", beam_size=1, best_of=1,
                                            temperature=0.0, without_timestamps=True, vad_filter=False,
                                            condition_on_previous_text=False, word_timestamps=False,
                                            max_new_tokens=self.limit)
        text = "".join(s.text for s in segments)
        return {"text": text, "e2e_s": time.perf_counter() - t0}


ROWS = {"edgeseq": EdgeseqRow, "ctranslate2": CTranslate2Row, "faster-whisper": FasterWhisperRow}


def main() -> int:
    spec = json.loads(sys.argv[1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library output goes to stderr (the row's log), the protocol owns stdout
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    def send(obj) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        row = ROWS[spec["kind"]](spec)
    except Exception as e:  # the row says why, the benchmark goes on
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        send({"error": f"{type(e).__name__}: {msg}"[:300]})
        return 1
    send({"ready": True, "mb": row.mb, "load_s": row.load_s, "info": row.info})
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["clip"]:
            send(row.clip(int(cmd[1])))
        elif cmd[:1] == ["rss"]:
            send({"peak_rss_mb": peak_rss_mb()})
        elif cmd[:1] == ["quit"]:
            break
    proto.flush()
    os._exit(0)  # no interpreter teardown (runtime thread pools can spin in their destructors)


if __name__ == "__main__":
    sys.exit(main())
