"""Where a probe runs: a Transport per kind of device, one probe runner for all.

    Transport.run(argv)        run a command on the device, return (returncode, stdout, stderr)
    Transport.put(local, dest) copy a file to the device
    Transport.home             a writable directory on the device for the content-addressed cache

`local` runs the runner with this interpreter in a fresh process. `ssh://user@host[:port]`
copies (once, by content hash) the artifact and a zip of this package's pure-Python
code, then runs `python -m toolchain.probe.runner` with the device's Python, which
needs numpy and the artifact's runtime (ExecuTorch, ONNX Runtime, LiteRT, or Core
ML on a Mac); the runner checks and says what is missing. A Mac is just an ssh
device whose Python has coremltools. Android would be an `adb://serial` Transport
(`adb shell`, `adb push`, a device-side runner binary): see DESIGN.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # toolchain/
REMOTE_CACHE = ".cache/edgeseq"


class LocalTransport:
    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable

    def popen(self, argv: list[str], stderr) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)


class QemuTransport(LocalTransport):
    """ARM64 under qemu-user on this host: the probe runner runs here and starts the aarch64
    edgeseq-runner under qemu-aarch64 (toolchain/native.py QEMU). Emulated: its timings are
    reported as "kind": "emulated", never as latencies."""

    name = "qemu-aarch64"


@dataclass
class SSHTransport:
    user: str | None
    host: str
    port: int | None
    python: str = "python3"
    key: str | None = None
    config: str | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def _ssh(self) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=accept-new"]
        if self.config:
            argv += ["-F", self.config]
        if self.key:
            argv += ["-i", self.key]
        if self.port:
            argv += ["-p", str(self.port)]
        return argv + self.extra

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self._ssh(), self.target, command], capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 255:  # ssh's own failure (connection, auth), not the command's
            raise InputError(f"{self.name}: ssh failed: {_last_line(proc.stderr)}")
        return proc

    def put(self, local: Path, dest: str) -> None:
        # Streamed through the ssh channel: needs neither scp nor an sftp subsystem on the device.
        with open(local, "rb") as f:
            proc = subprocess.run([*self._ssh(), self.target, f"cat > {shlex.quote(dest)}"], stdin=f,
                                  capture_output=True)
        if proc.returncode != 0:
            raise InputError(f"{self.name}: copy failed: {_last_line(proc.stderr.decode(errors='replace'))}")

    def popen(self, argv: list[str], stderr) -> subprocess.Popen:
        return subprocess.Popen([*self._ssh(), self.target, shlex.join(argv)], stdout=subprocess.PIPE,
                                stderr=stderr, text=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def parse_device(device: str, python: str | None, key: str | None, config: str | None):
    if device == "local":
        return LocalTransport(python)
    if device == "qemu-aarch64":
        return QemuTransport(python)
    u = urlparse(device)
    if u.scheme != "ssh" or not u.hostname:
        raise InputError(f"--device {device!r}: use 'local', qemu-aarch64 or ssh://[user@]host[:port]")
    return SSHTransport(user=u.username, host=u.hostname, port=u.port, python=python or "python3",
                        key=key, config=config)


def native_options(runner: str | None, device: str) -> list[str]:
    """The probe runner's options for `--runner` on `device` (qemu-aarch64 means the native runner)."""
    from ..native import resolve_runner

    if device.startswith("ssh://"):
        if runner == "native":
            raise InputError("--runner native over ssh:// is not supported yet (the probe over ssh runs the "
                             "device's Python); use --device qemu-aarch64 or local")
        return []
    if resolve_runner(runner, device) != "native":
        return []
    return ["--runner", "native"] + (["--native-device", device] if device != "local" else [])


def artifact_key(manifest: dict) -> str:
    """Content address of an artifact: its files' hashes (not the manifest's mutable verify field)."""
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:24]


def runner_zip() -> tuple[bytes, str]:
    """This package's .py files as a zip importable with PYTHONPATH (the remote needs no install)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(PACKAGE_DIR.rglob("*.py")):
            info = zipfile.ZipInfo(str(Path("toolchain") / f.relative_to(PACKAGE_DIR)), date_time=(2020, 1, 1, 0, 0, 0))
            z.writestr(info, f.read_bytes())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:16]


def stage_remote(t: SSHTransport, artifact_dir: Path, manifest: dict) -> tuple[str, str, bool]:
    """Copy runner zip and artifact to the device unless already there. Returns
    (remote artifact dir, remote zip path, whether the artifact was copied)."""
    # The device may set EDGESEQ_CACHE (e.g. in its sshd_config SetEnv); else ~/.cache/edgeseq.
    proc = t.run(f'printf %s "${{EDGESEQ_CACHE:-$HOME/{REMOTE_CACHE}}}"')
    base = proc.stdout.strip()
    if proc.returncode != 0 or not base:
        raise InputError(f"{t.name}: cannot find a cache directory: {_last_line(proc.stderr)}")
    key = artifact_key(manifest)
    zdata, zhash = runner_zip()
    remote_zip = f"{base}/runner-{zhash}.zip"
    remote_art = f"{base}/artifacts/{key}"
    check = t.run(f"mkdir -p {shlex.quote(base)}/artifacts && "
                  f"test -f {shlex.quote(remote_zip)} && echo zip; "
                  f"test -f {shlex.quote(remote_art)}/.complete && echo art")
    have = set(check.stdout.split())
    with tempfile.TemporaryDirectory() as tmp:
        if "zip" not in have:
            zp = Path(tmp) / "runner.zip"
            zp.write_bytes(zdata)
            t.put(zp, remote_zip)
        copied = "art" not in have
        if copied:
            tp = Path(tmp) / "artifact.tar"
            with tarfile.open(tp, "w") as tar:
                for name in ["manifest.json", *manifest["files"]]:
                    tar.add(artifact_dir / name, arcname=name)
            t.put(tp, f"{base}/{key}.tar")
            staging = f"{remote_art}.tmp"
            proc = t.run(f"rm -rf {shlex.quote(staging)} && mkdir -p {shlex.quote(staging)} && "
                         f"tar -xf {shlex.quote(base)}/{key}.tar -C {shlex.quote(staging)} && "
                         f"rm -f {shlex.quote(base)}/{key}.tar && touch {shlex.quote(staging)}/.complete && "
                         f"rm -rf {shlex.quote(remote_art)} && mv {shlex.quote(staging)} {shlex.quote(remote_art)}")
            if proc.returncode != 0:
                raise InputError(f"{t.name}: unpacking the artifact failed: {_last_line(proc.stderr)}")
    return remote_art, remote_zip, copied


def run_probe(transport, artifact_dir: Path, manifest: dict, options: list[str], progress=None) -> dict:
    """Run the probe runner on the device; stream its progress; return its JSON report."""
    if isinstance(transport, LocalTransport):
        argv = [transport.python, "-m", "toolchain.probe.runner", str(artifact_dir), *options]
        copied = None
    else:
        remote_art, remote_zip, copied = stage_remote(transport, artifact_dir, manifest)
        argv = ["env", f"PYTHONPATH={remote_zip}", transport.python, "-m", "toolchain.probe.runner",
                remote_art, *options]
    with tempfile.TemporaryFile("w+") as err:
        proc = transport.popen(argv, stderr=err)
        report = None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if "progress" in msg:
                if progress:
                    progress(msg["progress"], msg["total"])
            else:
                report = msg
        proc.wait()
        err.seek(0)
        stderr = err.read()
    if report is None:
        if proc.returncode == 255 and not isinstance(transport, LocalTransport):
            raise InputError(f"{transport.name}: ssh failed: {_last_line(stderr)}")
        if "No module named" in stderr or "not found" in stderr:
            raise InputError(f"{transport.name}: the device's python cannot run the probe: {_last_line(stderr)}")
        raise RuntimeError(f"probe on {transport.name} failed (exit {proc.returncode}): {_last_line(stderr)}")
    if "error" in report:
        raise InputError(f"{transport.name}: {report['error']}")
    if copied is not None:
        report["copied_artifact"] = copied
    return report


def probe_artifact(artifact: str | Path, device: str = "local", runs: int = 10, warmup: int = 2,
                   input_len: int | None = None, output_len: int | None = None, threads: int | None = None,
                   python: str | None = None, ssh_key: str | None = None, ssh_config: str | None = None,
                   runner: str | None = None, progress=None) -> dict:
    """`edgeseq probe`: check the arguments and the artifact here (a modified artifact is refused
    before anything is spawned or copied), then measure it in a fresh process on the device."""
    from ..artifact import open_artifact
    from ..generate import check_probe_lengths

    if runs < 1 or warmup < 0:
        raise InputError("--runs must be >= 1 and --warmup >= 0")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    art = open_artifact(artifact)
    r = art.recipe
    check_probe_lengths(input_len, output_len, r.max_input_len, r.max_output_len)
    transport = parse_device(device, python, ssh_key, ssh_config)
    options = ["--runs", str(runs), "--warmup", str(warmup), "--device-label", transport.name, "--progress",
                 *native_options(runner, device)]
    for flag, value in (("--input-len", input_len), ("--output-len", output_len), ("--threads", threads)):
        if value is not None:
            options += [flag, str(value)]
    return run_probe(transport, art.path, art.manifest, options, progress)
