"""A cell cache in an S3-compatible object store (AWS S3, MinIO, Cloudflare R2, GCS interop), by boto3.

Layout under `s3://BUCKET/PREFIX/`:

    <key>/obj-<uuid>/artifact/...   the entry's files, uploaded under a prefix unique to this build
    <key>/obj-<uuid>/cell.json
    <key>/entry.json                the marker: which obj-<uuid> is the entry, and every file's
                                    sha256 and size; written last, with a conditional put

An entry exists when its marker does; the marker is one object written in one request, so a
reader sees all of an entry or none of it. Publishing is `put_object(..., IfNoneMatch="*")`:
of two builders of the same cell, the first marker wins and the second deletes its own
uploads (a store that ignores the condition ends last-writer-wins, each marker naming its own
complete files, so still one intact entry). A builder killed mid-upload leaves files under an
`obj-<uuid>/` no marker names: never served (an `obj-` lifecycle rule can expire them). A reader
downloads the files the marker names and re-hashes every one; a mismatch, a missing file or an
unreadable marker drops the entry and the cell is rebuilt.

Endpoint, region and credentials come the standard AWS way (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/config, roles).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import socket
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..hashing import sha256_file
from .base import CacheStore, entry_files, read_results

MARKER = "entry.json"
MARKER_FORMAT = 1
# S3's rule, loosened to what the S3-compatible stores accept (GCS allows '_').
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
          "ExpiredToken", "Forbidden"}
CONFLICT = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


class S3Store(CacheStore):
    def __init__(self, bucket: str, prefix: str, url: str) -> None:
        self.bucket, self.prefix, self.url = bucket, prefix, url
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        rest = url.split("://", 1)[1]
        bucket, _, prefix = rest.partition("/")
        if not BUCKET.match(bucket):
            raise InputError(f"--cache {url}: not a valid bucket name {bucket!r} (s3://BUCKET/PREFIX)")
        prefix = prefix.strip("/")
        if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
            raise InputError(f"--cache {url}: malformed prefix {prefix!r}")
        return cls(bucket, prefix, f"s3://{bucket}/{prefix}".rstrip("/"))

    @staticmethod
    def _make_client(connect_timeout: float, attempts: int) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise InputError("--cache s3://...: boto3 is not installed (pip install 'edgeseq[scale]')") from None
        cfg = Config(connect_timeout=connect_timeout, read_timeout=120,
                     retries={"max_attempts": attempts, "mode": "standard"})
        try:  # a new session: it reads the environment now (the default one caches credentials)
            return boto3.session.Session().client("s3", config=cfg)
        except Exception as e:  # a malformed endpoint URL or region in the environment
            raise InputError(f"cannot configure the S3 client: {str(e).splitlines()[0]}") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client(10, 4)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # shipped to Dask workers: each makes its own client
        return {**self.__dict__, "_client": None}

    def check(self) -> None:
        """head_bucket with a short connect timeout and one attempt: unreachable, wrong credentials,
        a missing bucket each become one line before anything is written."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        client = self._make_client(3, 1)
        where = f"--cache {self.url}"
        try:
            client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise InputError(f"{where}: no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "AWS_PROFILE or a role)") from None
        except ClientError as e:
            code = _code(e)
            if code in DENIED:
                raise InputError(f"{where}: access denied ({code}): wrong credentials or no permission") from None
            if code in ("404", "NoSuchBucket"):
                raise InputError(f"{where}: bucket {self.bucket!r} not found") from None
            raise InputError(f"{where}: {code or e}") from None
        except (TimeoutError, BotoCoreError, OSError) as e:
            raise InputError(f"{where}: cannot reach the store: {str(e).splitlines()[0]}") from None
        self._client = None

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _marker(self, key: str) -> dict[str, Any] | None:
        """The marker of `key`, None if there is none; a marker that is not one is dropped."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key, MARKER))["Body"].read()
        except Exception as e:
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            m = json.loads(body)
            ok = isinstance(m, dict) and isinstance(m.get("files"), dict) and \
                re.fullmatch(r"obj-[0-9a-f]{32}", str(m.get("dir")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            ok = False
        if not ok:
            self._drop(key, None)
            return None
        return m

    def _drop(self, key: str, files_dir: str | None) -> None:
        """Delete a corrupt entry: its marker first (it stops being served), then its files."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key, MARKER))
        if files_dir:
            self._delete_prefix(self._key(key, files_dir) + "/")

    def _delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True})

    def get(self, key: str, scratch: Path) -> Path | None:
        m = self._marker(key)
        if m is None:
            return None
        local = scratch / f"s3-{uuid.uuid4().hex[:8]}"
        for rel, meta in sorted(m["files"].items()):
            dest = local / rel
            if not dest.resolve().is_relative_to(local.resolve()):  # a marker naming ../ is corrupt
                self._drop(key, m["dir"])
                return None
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(self.bucket, self._key(key, m["dir"], rel), str(dest))
            except Exception as e:
                if _code(e) in ("NoSuchKey", "404"):
                    self._drop(key, m["dir"])
                    return None
                raise
            if not isinstance(meta, dict) or sha256_file(dest) != meta.get("sha256") or \
                    dest.stat().st_size != meta.get("bytes"):
                self._drop(key, m["dir"])
                return None
        if read_results(local) is None:  # every listed file checks out, but the artifact does not
            self._drop(key, m["dir"])
            return None
        return local

    def put(self, key: str, staged: Path) -> Path:
        files_dir = f"obj-{uuid.uuid4().hex}"
        files = {rel: {"sha256": sha256_file(staged / rel), "bytes": (staged / rel).stat().st_size}
                 for rel in entry_files(staged)}
        try:
            for rel in files:
                self.client.upload_file(str(staged / rel), self.bucket, self._key(key, files_dir, rel))
            marker = {"format": MARKER_FORMAT, "key": key, "dir": files_dir, "files": files,
                      "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                      "builder": socket.gethostname()}
            body = json.dumps(marker, indent=1).encode()
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key, MARKER), Body=body, IfNoneMatch="*")
            except Exception as e:
                if _code(e) in CONFLICT:  # another builder published this cell first: theirs stays
                    self._delete_prefix(self._key(key, files_dir) + "/")
                elif _code(e) in ("501", "NotImplemented"):  # no conditional writes: last writer wins
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key, MARKER), Body=body)
                else:
                    raise
        except BaseException:
            try:
                self._delete_prefix(self._key(key, files_dir) + "/")
            except Exception:  # the store went away: the unnamed files are never served anyway
                pass
            raise
        return staged
