"""The artifact folder and its manifest, written atomically, checked when opened.

Layout of an artifact directory:
    manifest.json     what it is, where it came from, signatures, sha256 of every file
    tokenizer.json    copied from the checkpoint
    <model files>     per runtime (ExecuTorch: model.pte + weights.ptd)

Export writes everything into a hidden temporary sibling directory and renames it
into place at the end, so an interrupted export leaves no partial artifact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .hashing import sha256_file
from .errors import InputError
from .specs import Recipe, Target, recipe_from_dict, target_from_dict

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _remove_stale(parent: Path, name: str) -> None:
    """Delete staging dirs left by exports that were killed (their pid is gone)."""
    for d in parent.glob(f".{name}.tmp-*"):
        try:
            pid = int(d.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


@contextmanager
def staging_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success, atomically move it to `out`."""
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to replace it")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as e:
        raise InputError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / "a")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"cannot write artifact {out}: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def file_entries(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in names}


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def recipe(self) -> Recipe:
        return recipe_from_dict(self.manifest["recipe"])

    @property
    def target(self) -> Target:
        return target_from_dict(self.manifest["target"])

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def model_bytes(self) -> int:
        return sum(e["bytes"] for n, e in self.manifest["files"].items() if n != "tokenizer.json")

    @property
    def total_bytes(self) -> int:
        return sum(e["bytes"] for e in self.manifest["files"].values())

    def update(self, key: str, value: Any) -> None:
        """Record a result (e.g. the last verify) in the manifest, atomically."""
        self.manifest[key] = value
        write_json_atomic(self.path / MANIFEST, self.manifest)


def open_artifact(path: str | Path, check_hashes: bool = True) -> Artifact:
    p = Path(path)
    mpath = p / MANIFEST
    if not mpath.is_file():
        raise InputError(f"{p}: not an artifact (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{mpath}: invalid JSON: {e}") from None
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise InputError(f"{mpath}: missing format_version")
    if version > FORMAT_VERSION:
        raise InputError(f"{mpath}: format_version {version} is newer than this tool ({FORMAT_VERSION}); "
                         f"upgrade edgeseq")
    for key in ("files", "programs", "recipe", "target", "checkpoint"):
        if key not in manifest:
            raise InputError(f"{mpath}: missing key {key!r}")
    if check_hashes:
        for name, entry in manifest["files"].items():
            f = p / name
            if not f.is_file():
                raise InputError(f"{f}: missing (listed in the manifest)")
            if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
                raise InputError(f"{f}: sha256 does not match the manifest; the artifact was modified "
                                 f"or corrupted, re-export it")
    return Artifact(path=p, manifest=manifest)
