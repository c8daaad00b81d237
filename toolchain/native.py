"""The native runner (`runtime/`, C++ over the ExecuTorch runtime) behind `--runner native`.

`edgeseq-runner` runs a whole greedy generation in C++ (encode once, decode per token on
the in-program KV cache, argmax in place): no Python between steps, as on a device. This
module builds it from the installed `executorch` wheel, writes its requests (ids in, ids
out: tokenization stays here), and adapts it to the Session interface: a NativeSession
has `generate(...)`, and generate.greedy() hands it the whole loop with the same rules it
would apply itself (forced prompt and language detection, suppress / begin-suppress
tokens, min_new_tokens, forced EOS, force_length).

The request (JSON; see runtime/src/runner.cpp) names the program and weights files with
their sha256 from the manifest (the runner refuses modified files itself), the methods
(encode, the shorter encode_L programs, decode), the encode input names, the token rules,
and the ids or a raw float32 features file (Whisper's log-mel). Per-step logits, when
asked for (verify), come back in a float32 file [steps, V]: `verify --runner native`
compares the runner's own logits with eager, not the Python Session's.

Where the runner executes is a `Device`: the host binary, or the ARM64 binary under
qemu-user (`qemu-aarch64`: emulated, so its timings are not latencies).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .backends.base import Session
from .errors import InputError

ROOT = Path(__file__).resolve().parent.parent  # the source checkout (runtime/ lives beside toolchain/)
RUNTIME_SRC = ROOT / "runtime"
BUILD = ROOT / "build"
RUNNER_ENV = "EDGESEQ_RUNNER"  # an edgeseq-runner binary to use for the host instead of build/runner-host
ET_VERSION = "1.5.1"  # the wheel the ARM64 runner is built against (the same as the host's)
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"


@dataclass(frozen=True)
class Device:
    """Where edgeseq-runner executes: `arch` picks the build, `launcher` prefixes the command."""

    name: str
    arch: str  # "host" or "aarch64"
    launcher: tuple[str, ...] = ()
    kind: str = "measured"  # probe kind: "measured" on the host, "emulated" under qemu


HOST = Device("local", "host")
# qemu-user's default CPU for aarch64 is "max" (every feature it can emulate, SVE2 and SME
# included). A Cortex-A76 (ARMv8.2-A: NEON, fp16 arithmetic, dot product; no SVE, no i8mm) is
# the class of core in the phones and boards edgeseq targets, so XNNPACK picks the same
# kernels there as on such a device, and emulating NEON is much faster than SVE.
QEMU_CPU = "cortex-a76"
QEMU = Device("qemu-aarch64", "aarch64", ("qemu-aarch64", "-L", AARCH64_SYSROOT, "-cpu", QEMU_CPU), "emulated")


def device(name: str | None) -> Device:
    if name in (None, "local"):
        return HOST
    if name == "qemu-aarch64":
        return QEMU
    raise InputError(f"native runner device {name!r}: use local or qemu-aarch64")


# ---- building ----------------------------------------------------------------------------

def executorch_root() -> Path:
    """The installed executorch package directory (lib/, include/, share/cmake/), found without
    importing it (importing executorch imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("python package 'executorch' is not installed: the native runner builds against its wheel")
    return Path(list(spec.submodule_search_locations)[0])


def aarch64_root() -> Path:
    """The aarch64 executorch wheel, downloaded once into build/ and unpacked (lib/, include/,
    share/cmake/ only)."""
    out = BUILD / "executorch-aarch64" / "executorch"
    if (out / "share" / "cmake" / "executorch-config.cmake").is_file():
        return out
    wheels = BUILD / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"executorch-{ET_VERSION}-cp311-cp311-manylinux_2_28_aarch64.whl"
    if not (wheels / pattern).is_file():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"executorch=={ET_VERSION}",
                               "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
                               "--only-binary=:all:", "--no-deps", "-d", str(wheels)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not (wheels / pattern).is_file():
            raise InputError(f"cannot download the aarch64 executorch {ET_VERSION} wheel: {_last(proc.stderr)}")
    import zipfile

    staging = out.parent.with_name("executorch-aarch64.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheels / pattern) as z:
        z.extractall(staging, [n for n in z.namelist()
                               if n.startswith(("executorch/lib/", "executorch/include/", "executorch/share/"))])
    shutil.rmtree(out.parent, ignore_errors=True)
    staging.rename(out.parent)
    return out


def build_dir(arch: str) -> Path:
    return BUILD / f"runner-{arch}"


def build(arch: str = "host", quiet: bool = True) -> Path:
    """Configure and build edgeseq-runner for `arch` (incremental: seconds when up to date).
    Returns the binary. One-line InputError when a compiler or cmake is missing."""
    if arch == "host":
        cxx, root, extra = shutil.which("c++") or shutil.which("g++"), executorch_root(), []
        if not cxx:
            raise InputError("no C++ compiler (c++/g++) found: the native runner cannot be built here")
    elif arch == "aarch64":
        if not shutil.which("aarch64-linux-gnu-g++"):
            raise InputError("no aarch64 cross compiler (Debian: apt-get install g++-aarch64-linux-gnu; "
                             "`make test-deps` does it as root)")
        root, extra = aarch64_root(), [f"-DCMAKE_TOOLCHAIN_FILE={RUNTIME_SRC / 'toolchain-aarch64-linux-gnu.cmake'}"]
    else:
        raise InputError(f"unknown runner architecture {arch!r}: host or aarch64")
    if not shutil.which("cmake"):
        raise InputError("cmake not found: the native runner cannot be built here")
    out = build_dir(arch)
    out.mkdir(parents=True, exist_ok=True)
    steps = [["cmake", "-S", str(RUNTIME_SRC), "-B", str(out), f"-DEXECUTORCH_ROOT={root}", *extra],
             ["cmake", "--build", str(out), "-j", str(min(os.cpu_count() or 2, 4))]]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=quiet, text=True)
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout or "") if quiet else ""
            lines = [line for line in err.splitlines() if "error" in line.lower()] or [err]
            raise InputError(f"building the {arch} native runner failed: {_last(lines[0])}")
    return out / "edgeseq-runner"


def runner_binary(arch: str = "host") -> Path:
    if arch == "host" and os.environ.get(RUNNER_ENV):
        path = Path(os.environ[RUNNER_ENV])
    else:
        path = build_dir(arch) / "edgeseq-runner"
    if not os.access(path, os.X_OK):
        make = "make runner" if arch == "host" else "make runner-aarch64"
        raise InputError(f"no native runner at {path}: build it with `{make}`")
    return path


def _last(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# ---- requests ----------------------------------------------------------------------------

def base_request(artifact) -> dict[str, Any]:
    """The request fields fixed by the artifact: files (with their manifest sha256), methods,
    encode input names, token rules, cache size."""
    meta = artifact.meta
    enc, dec = meta.programs["encode"], meta.programs["decode"]
    if enc.file is None or enc.file != dec.file or not enc.method or not dec.method:
        raise InputError(f"{artifact.path}: the native runner runs one ExecuTorch program with encode and decode "
                         f"methods; this artifact has none")
    program = artifact.file(enc.file)
    data = None
    sha = {str(program): meta.files[enc.file].sha256}
    if enc.data_file:
        data = artifact.file(enc.data_file)
        sha[str(data)] = meta.files[enc.data_file].sha256
    return {
        "program": str(program), "data": str(data) if data else None, "sha256": sha,
        "encode": {"method": enc.method, "inputs": enc.input_names(),
                   "lengths": [{"length": e.length, "method": e.method} for e in enc.lengths]},
        "decode": {"method": dec.method},
        # The runner reads the manifest's own "tokens" section (start/eos/pad, prompt, suppression).
        # generate.greedy() sends the prompt it runs (a run-time --language/--task included) in its
        # rules, a language to detect as null; what builds prompts (task_prompt) stays here.
        "tokens": {k: v for k, v in artifact.manifest["tokens"].items() if k != "task_prompt"},
        "max_output_len": meta.recipe.max_output_len,
    }


class RunnerError(RuntimeError):
    """The runner failed while executing (exit 3) or crashed."""


class NativeSession(Session):
    """A Session whose generations run in edgeseq-runner (one `--serve` process, the program
    loaded once). encode/decode per step are not offered: the loop is the runner's."""

    runs_loop = True

    def __init__(self, artifact, threads: int | None = None, dev: Device = HOST):
        if artifact.target.runtime != "executorch" or artifact.target.backend != "xnnpack":
            raise InputError(f"--runner native runs executorch-xnnpack artifacts; this one is "
                             f"{artifact.target.runtime}/{artifact.target.backend}")
        self.artifact, self.device = artifact, dev
        self.binary = runner_binary(dev.arch)
        self.threads = threads or artifact.target.threads
        self.base = base_request(artifact)
        self.base["threads"] = self.threads
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeseq-native-")
        self._proc: subprocess.Popen | None = None
        self._err: IO[str] | None = None
        atexit.register(self.close)

    # The Session interface's per-step calls do not exist here: greedy() calls generate().
    def encode(self, *inputs):
        raise NotImplementedError("NativeSession runs whole generations: use generate.greedy()")

    def decode(self, token: int, position: int, state):
        raise NotImplementedError("NativeSession runs whole generations: use generate.greedy()")

    def argv(self, *extra: str) -> list[str]:
        return [*self.device.launcher, str(self.binary), *extra]

    def request(self, ids: Sequence[int] | None, inputs, *, max_new_tokens: int | None, min_new_tokens: int,
                force_length: bool, logits: Path | None = None, rules: dict | None = None) -> dict[str, Any]:
        req = dict(self.base)
        if rules is not None:  # greedy()'s keywords, which may differ from the manifest's
            req["tokens"] = {**req["tokens"], **rules}
        if inputs is None:
            req["ids"] = [int(i) for i in ids or ()]
        else:  # the encode program's float input (log-mel features) as a raw float32 file
            arrays = list(inputs[0].values()) if isinstance(inputs[0], dict) else list(inputs)
            if len(arrays) != 1:
                raise InputError(f"the native runner takes ids or one float features array, got {len(arrays)} arrays")
            path = Path(self._tmp.name) / "features.f32"
            np.ascontiguousarray(arrays[0], dtype=np.float32).tofile(path)
            req["features"] = str(path)
        req.update(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, force_length=force_length,
                   logits=str(logits) if logits else None)
        return req

    def _serve(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            self._err = tempfile.TemporaryFile("w+")
            self._proc = subprocess.Popen(self.argv("--serve"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._err, text=True, bufsize=1)
        return self._proc

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        proc = self._serve()
        assert proc.stdin is not None and proc.stdout is not None and self._err is not None  # PIPEs, set by _serve
        try:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            proc.wait()
            self._err.seek(0)
            raise RunnerError(f"native runner exited ({proc.returncode}): {_last(self._err.read())}")
        out = json.loads(line)
        if "error" in out:
            cls = InputError if out.get("code") == 2 else RunnerError
            raise cls(f"native runner: {out['error']}")
        return out

    def generate(self, ids: Sequence[int] | None, *, inputs: Any = None, max_new_tokens: int | None,
                 min_new_tokens: int, keep_logits: bool,
                 force_length: bool, start_id: int, eos_id: int, pad_id: int, prompt=(), language_ids=(),
                 suppress=(), begin_suppress=(), forced_eos=None):
        from .generate import Generation

        rules = {"decoder_start_token_id": start_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
                 "decoder_prompt": list(prompt), "language_token_ids": list(language_ids),
                 "suppress_tokens": list(suppress), "begin_suppress_tokens": list(begin_suppress),
                 "forced_eos_token_id": forced_eos}
        logits_path = Path(self._tmp.name) / "logits.f32" if keep_logits else None
        out = self.call(self.request(ids, inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                     force_length=force_length, logits=logits_path, rules=rules))
        self.encode_length = out["encoder_len"]
        gen = Generation(tokens=out["ids"], encode_s=out["encode_ms"] / 1000,
                         step_s=[s / 1000 for s in out["step_ms"]], stopped=out["stopped"], prompt=out["prompt"])
        if logits_path is not None:
            rows = np.fromfile(logits_path, dtype=np.float32).reshape(-1, out["vocab"])
            gen.logits = list(rows)
        return gen

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None and self._proc.stdin is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        if self._err is not None:
            self._err.close()
            self._err = None
        self._tmp.cleanup()


def open_session(artifact, threads: int | None = None, device_name: str | None = None) -> NativeSession:
    return NativeSession(artifact, threads, device(device_name))


def resolve_runner(runner: str | None, device_name: str | None) -> str:
    """`--runner` (python | native; None = the default) with `--device`: an emulated ARM64 device
    has no Python, so it means the native runner."""
    if runner not in (None, "python", "native"):
        raise InputError(f"--runner {runner!r}: use python or native")
    if device_name not in (None, "local"):
        device(device_name)  # a one-line error for an unknown device
        if runner == "python":
            raise InputError(f"--device {device_name} runs the native runner only; drop --runner python")
        return "native"
    return runner or "python"


def session_for(artifact, threads: int | None = None, runner: str | None = None, device_name: str | None = None):
    """The Session `run` and `verify` use: the artifact's Python runtime Session (the default),
    or the native runner on the host or on `device_name`."""
    if resolve_runner(runner, device_name) == "native":
        return open_session(artifact, threads, device_name)
    from . import backends

    return backends.for_target(artifact.target).open_session(artifact, threads=threads)


def probe(session: NativeSession, ids, inputs, runs: int, warmup: int, output_len: int) -> dict[str, Any]:
    """One runner process measuring itself: load_ms, ttft_ms, decode_ms_per_token, tokens_per_s,
    peak_rss_mb of the runner process (`--runs`/`--warmup`, EOS ignored as the Python probe does)."""
    req = session.request(ids, inputs, max_new_tokens=output_len, min_new_tokens=0, force_length=True)
    path = Path(session._tmp.name) / "probe.json"
    path.write_text(json.dumps(req))
    proc = subprocess.run(session.argv(str(path), "--runs", str(runs), "--warmup", str(warmup)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        cls = InputError if proc.returncode == 2 else RunnerError
        raise cls(f"native runner: {_last(proc.stderr)}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    """`python -m toolchain.native build [host|aarch64]`: what `make runner` runs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 1 or args[0] != "build":
        print("usage: python -m toolchain.native build [host|aarch64]", file=sys.stderr)
        return 2
    try:
        path = build(args[1] if len(args) > 1 else "host")
    except InputError as e:
        print(f"note: native runner not built: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
