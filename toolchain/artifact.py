"""The artifact folder and its manifest, written atomically, checked when opened.

Layout of an artifact directory:
    manifest.json     what it is, where it came from, signatures, sha256 of every file
    tokenizer.json    copied from the checkpoint (or converted from T5's spiece.model); for
                      Marian: source.spm, target.spm, vocab.json (see tokenizer.py)
    <model files>     per runtime (ExecuTorch: model.pte + weights.ptd)

Export writes everything into a hidden temporary sibling directory and renames it
into place at the end, so an interrupted export leaves no partial artifact.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import interrupts
from .errors import InputError, read_json_object
from .hashing import sha256_file
from .manifest import FORMAT_VERSION, Manifest, parse
from .specs import Recipe, Target

__all__ = ["FORMAT_VERSION", "MANIFEST", "Artifact", "Manifest", "open_artifact", "staging_dir"]

MANIFEST = "manifest.json"


def _pid(d: Path, marker: str) -> int | None:
    try:
        return int(d.name.split(marker, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def remove_stale(parent: Path, name: str) -> None:
    """Clean up after exports that were killed (their pid is gone).

    `.NAME.tmp-PID-*` is an unfinished artifact: deleted. `.NAME.old-PID-*/a` is the previous
    artifact, moved aside by --force just before the new one was renamed into place: if NAME
    is missing (killed between the two renames) it is moved back, so nothing is lost.
    """
    pattern = glob.escape(name)
    for d in parent.glob(f".{pattern}.old-*"):
        pid = _pid(d, ".old-")
        if pid is None or _alive(pid):
            continue
        if (d / "a").exists() and not (parent / name).exists():
            os.replace(d / "a", parent / name)
        shutil.rmtree(d, ignore_errors=True)
    for d in parent.glob(f".{pattern}.tmp-*"):
        pid = _pid(d, ".tmp-")
        if pid is not None and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _swap_in(tmp: Path, out: Path, parent: Path) -> None:
    """Rename tmp to out; an existing out is moved aside first and put back if that fails.
    (rename(2) cannot replace a non-empty directory, so this takes two renames.)"""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=parent))
    try:
        os.replace(out, old / "a")
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / "a", out)
            raise
    finally:
        if not (old / "a").exists() or out.exists():
            shutil.rmtree(old, ignore_errors=True)


def check_replaceable(out: Path) -> None:
    """`--force` replaces an earlier edgeseq artifact, nothing else: `out` must be an empty
    directory, or one whose manifest.json is an edgeseq manifest listing every file in it.
    Anything else (a user's folder, a file, an artifact someone added notes to) is refused
    with one line and left untouched."""
    out = Path(out)
    if not out.is_dir() or out.is_symlink():
        raise InputError(f"{out} exists and is not a directory; --force replaces only an edgeseq artifact")
    entries = list(out.rglob("*"))
    if not entries:
        return
    mpath = out / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        ours = isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int) \
            and isinstance(manifest.get("files"), dict) and "programs" in manifest
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise InputError(f"{out} is not an edgeseq artifact (no valid {MANIFEST}); --force replaces only "
                         f"an earlier artifact: remove it yourself or choose another --output")
    listed = set(manifest["files"]) | {MANIFEST}
    names = [p.relative_to(out).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "") for p in entries]
    # A directory is the artifact's when it holds listed files (a Core ML .mlpackage).
    extra = sorted(n for n in names if n not in listed and not (n.endswith("/") and any(
        f.startswith(n) for f in listed)))
    if extra:
        raise InputError(f"{out}: holds {extra[0]!r}{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}, "
                         f"which its manifest does not list; --force would delete it: move it out first")


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


@contextmanager
def staging_dir(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success, atomically move it to `out`.

    On any failure (an exception, disk full, a signal turned into SystemExit) the temp dir
    is removed and `out` is what it was before; a SIGKILL leaves the temp dir, which the
    next export to the same place removes (remove_stale)."""
    out = Path(out)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, out.name)  # may put back an artifact a killed --force had moved aside
        if out.exists() or out.is_symlink():
            if not force:
                raise InputError(f"{out} already exists; pass --force to replace it")
            check_replaceable(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=parent))
    except OSError as e:
        raise InputError(f"cannot write to {parent}: {_why(e)}") from None
    try:
        yield tmp
        interrupts.check()  # a Ctrl-C swallowed on its way up still means nothing lands
        _swap_in(tmp, out, parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"cannot write artifact {out}: {_why(e)} (nothing was written)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp sibling + rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def file_entries(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(directory / n), "bytes": (directory / n).stat().st_size} for n in names}


@dataclass
class Artifact:
    """An opened artifact: its folder, the manifest as read (`manifest`, the JSON: backends read
    their own sections from it, `update` writes it) and the same manifest typed (`meta`)."""

    path: Path
    manifest: dict[str, Any]
    _meta: Manifest | None = field(default=None, repr=False)

    @property
    def meta(self) -> Manifest:
        if self._meta is None:
            self._meta = parse(self.manifest, str(self.path / MANIFEST))
        return self._meta

    @property
    def recipe(self) -> Recipe:
        return self.meta.recipe

    @property
    def target(self) -> Target:
        return self.meta.target

    def file(self, name: str) -> Path:
        return self.path / name

    def load_tokenizer(self) -> Any:
        """The artifact's tokenizer (tokenizer.TextTokenizer): tokenizers or sentencepiece only."""
        from .tokenizer import from_manifest

        return from_manifest({"tokenizer": self.meta.tokens.tokenizer}, self.path)

    @property
    def model_bytes(self) -> int:
        """What a device loads: every file but the tokenizer's and those kept for verify only."""
        skip = {*self.meta.tokenizer_files(str(self.path / MANIFEST)), *self.meta.verification_files}
        return sum(e.bytes for n, e in self.meta.files.items() if n not in skip)

    @property
    def total_bytes(self) -> int:
        return sum(e.bytes for e in self.meta.files.values())

    def update(self, key: str, value: Any) -> None:
        """Record a result (e.g. the last verify) in the manifest, atomically."""
        self.manifest[key] = value
        self._meta = None
        try:
            write_json_atomic(self.path / MANIFEST, self.manifest)
        except OSError as e:
            raise InputError(f"cannot update {self.path / MANIFEST}: {_why(e)}") from None


def _check_hashes(p: Path, m: Manifest) -> None:
    for name, entry in m.files.items():
        f = p / name
        if not f.is_file():
            raise InputError(f"{f}: missing (listed in the manifest)")
        if f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
            raise InputError(f"{f}: sha256 does not match the manifest; the artifact was modified "
                             f"or corrupted, re-export it")
    # A program that is a directory (an .mlpackage) is loaded whole: nothing unlisted in it.
    for prog in m.programs.values():
        d = p / prog.file if prog.file else None
        if d is not None and d.is_dir():
            for f in sorted(d.rglob("*")):
                if f.is_file() and f.relative_to(p).as_posix() not in m.files:
                    raise InputError(f"{f}: not listed in the manifest; the artifact was modified, re-export it")


def open_artifact(path: str | Path, check_hashes: bool = True) -> Artifact:
    """Open an artifact dir; refuse (one-line InputError) a manifest that is unreadable, malformed
    or newer than this tool, and any file whose sha256 or size differs from the manifest."""
    p = Path(path)
    mpath = p / MANIFEST
    if not p.exists() and p.parent.is_dir():
        remove_stale(p.parent, p.name)  # an export killed mid --force left it aside: put it back
    if not mpath.is_file():
        raise InputError(f"{p}: not an artifact (no {MANIFEST})")
    manifest = read_json_object(mpath)
    meta = parse(manifest, str(mpath))
    if check_hashes:
        _check_hashes(p, meta)
    return Artifact(path=p, manifest=manifest, _meta=meta)
