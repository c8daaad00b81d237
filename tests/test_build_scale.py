"""`edgeseq build` beyond one machine: --shard K/N and `build merge`, an s3:// cache on a real
S3-compatible server (moto in server mode, with IAM auth, on loopback), and cells on a real Dask
scheduler with two worker processes on loopback (one killed mid-cell)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import invoke

REPO = Path(__file__).resolve().parents[1]
BUCKET = "edgeseq-ci"
RECIPES = ("r1", "r2", "r3", "r4")  # shards 1, 2, 2, 1 of 2: both shards have cells
# What must agree between two builds of the same cell, wherever and however it was built.
SAME = ("cell", "checkpoint", "recipe", "target", "status", "key", "model_bytes", "sequence_match",
        "task_accuracy", "reference_accuracy", "verify_passed", "verify_failures", "verdict")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "server exited"
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def clone(base: Path, checkpoint: Path, recipes=RECIPES, extra: str = "") -> Path:
    """A fresh 'clone': the tiny checkpoint, fp32 recipes that differ only by name (distinct cells,
    the cheapest ones), one executorch-xnnpack target. Returns the matrix path."""
    base.mkdir(parents=True)
    shutil.copytree(checkpoint, base / "ck")
    for r in recipes:
        (base / f"{r}.yaml").write_text(
            f"format_version: 1\nname: {r}\ndescription: t\nmax_input_len: 24\nmax_output_len: 12\n"
            "tolerance: {max_abs_logit_diff: 1.0e+9, min_sequence_match: 0.0, max_accuracy_drop: 1.0}\n")
    (base / "matrix.yaml").write_text(
        f"format_version: 1\ncheckpoints: [ck]\nrecipes: [{', '.join(f'{r}.yaml' for r in recipes)}]\n"
        f"targets: [executorch-xnnpack]\nprobe_runs: 1\nverify_limit: 1\n{extra}")
    return base / "matrix.yaml"


def summary(text: str) -> dict:
    return json.loads(text[text.index("{\n"):])


def build(matrix: Path, *args) -> tuple[dict, float]:
    t = time.time()
    code, text = invoke("build", matrix, "-o", matrix.parent / "out", "--json", *args)
    assert code == 0, text
    return summary(text), time.time() - t


def same(rows: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in SAME} for r in rows]


# --- a real S3-compatible server: moto's, with IAM authentication on ---------------------------------

@pytest.fixture(scope="module")
def s3_server():
    """moto in server mode on loopback; the first 3 requests are unauthenticated (they create an IAM
    user allowed s3:*, and its key), every later one must be signed with that key."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(port, proc)
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="ci")
        iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        client.create_bucket(Bucket=BUCKET)
        yield {"env": env, "client": client, "port": port}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def aws(s3_server, monkeypatch):
    """The standard AWS environment pointing at the loopback server (no profile or config file)."""
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for k, v in s3_server["env"].items():
        monkeypatch.setenv(k, v)
    return s3_server


def objects(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def intact_entries(prefix: str, tmp: Path) -> dict[str, Path]:
    """Every entry under the prefix that the store serves (marker present, every file re-hashed)."""
    from toolchain.cache import open_store

    store = open_store(f"s3://{BUCKET}/{prefix}")
    keys = {k.split("/")[1] for k in objects(store.client, prefix + "/") if k.endswith("/entry.json")}
    tmp.mkdir(parents=True, exist_ok=True)
    got = {k: store.get(k, tmp) for k in keys}
    assert all(got.values()), got
    return got


@pytest.fixture(scope="module")
def first_s3_build(checkpoint, s3_server, tmp_path_factory):
    """Clone A builds the 4-cell matrix into s3://BUCKET/shared (every cell built), once."""
    base = tmp_path_factory.mktemp("clone") / "a"
    matrix = clone(base, checkpoint)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_server["env"].items():
            mp.setenv(k, v)
        s, seconds = build(matrix, "--cache", f"s3://{BUCKET}/shared")
    assert [c["cache_hit"] for c in s["cells"]] == [False] * 4 and s["ok"], s
    return s, seconds


# --- sharding ----------------------------------------------------------------------------------------

def test_shards_are_stable_and_cover_every_cell(checkpoint, tmp_path):
    """Every cell is in exactly one shard; adding cells (recipes, a checkpoint) moves no existing cell."""
    from toolchain.build import cell_names, load_matrix, plan

    def shards(matrix: Path, n: int) -> dict[tuple[str, str, str], int]:
        m = load_matrix(matrix)
        parts = [[cell_names(*c) for c in plan(m, (k, n))] for k in range(1, n + 1)]
        every = [cell_names(*c) for c in plan(m, None)]
        assert sorted(c for p in parts for c in p) == sorted(every)  # each cell exactly once
        return {c: k for k, p in enumerate(parts, 1) for c in p}

    matrix = clone(tmp_path / "a", checkpoint, recipes=[f"r{i}" for i in range(1, 9)])
    more = clone(tmp_path / "b", checkpoint, recipes=[f"r{i}" for i in range(1, 13)])
    shutil.copytree(checkpoint, tmp_path / "b" / "ck2")
    more.write_text(more.read_text().replace("checkpoints: [ck]", "checkpoints: [ck, ck2]"))
    for n in (1, 2, 3, 5):
        old, new = shards(matrix, n), shards(more, n)
        assert len(old) == 8 and len(new) == 24 and set(old.values()) <= set(range(1, n + 1))
        assert {c: new[c] for c in old} == old, n


@pytest.mark.slow
def test_two_shards_merged_equal_one_build(checkpoint, first_s3_build, aws, tmp_path):
    """--shard 1/2 and --shard 2/2 in two separate clones, each building its cells from nothing (its
    own empty cache), merged: the same cells, keys and verify results as the unsharded build (clone
    A's, into the s3:// cache), each cell exactly once.
    Then the merge refuses a missing shard, a shard given twice and a part of another matrix, in one
    line, writing nothing."""
    unsharded, _ = first_s3_build
    parts = []
    for k in (1, 2):
        matrix = clone(tmp_path / f"shard{k}", checkpoint)
        s, _ = build(matrix, "--shard", f"{k}/2", "--cache", tmp_path / f"cache{k}")
        assert s["shard"] == {"index": k, "count": 2} and len(s["cells"]) == 2
        assert not any(c["cache_hit"] for c in s["cells"]), s["cells"]
        parts.append(matrix.parent / "out" / "build.json")
    code, text = invoke("build", "merge", *parts, "-o", tmp_path / "merged", "--json")
    assert code == 0, text
    merged = summary(text)
    assert same(merged["cells"]) == same(unsharded["cells"])
    assert [c["cell"] for c in merged["cells"]] == [f"ck/{r}/executorch-xnnpack" for r in RECIPES]
    assert json.loads((tmp_path / "merged" / "build.json").read_text())["cells"] == merged["cells"]
    assert (tmp_path / "merged" / "build.md").read_text().count("| ck |") == 4

    # A part of another matrix (same cells, other thresholds; all cache hits).
    other = tmp_path / "shard2" / "matrix.yaml"
    other.write_text(other.read_text() + "thresholds: {max_slowdown_pct: 50}\n")
    code, text = invoke("build", other, "-o", tmp_path / "other", "--shard", "2/2", "--cache",
                        f"s3://{BUCKET}/shared")
    assert code == 0, text
    for bad, why in (([parts[0]], "shard(s) 2/2 missing"), ([parts[0], parts[0]], "shard 1/2 given twice"),
                     ([parts[0], tmp_path / "other" / "build.json"], "different matrices"),
                     ([parts[0], tmp_path / "merged" / "build.json"], "not a shard's build.json")):
        code, text = invoke("build", "merge", *bad, "-o", tmp_path / "refused")
        assert code == 2 and why in text and len(text.strip().splitlines()) == 1, text
        assert not (tmp_path / "refused").exists()


# --- the S3 cache ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_s3_cache_shared_by_clones(checkpoint, first_s3_build, aws, tmp_path):
    """Clone B: all cache hits from clone A's uploads, in <= 10% of A's time, the same cells. A
    corrupted object of one entry is caught by its hash: that cell alone is rebuilt, and republished."""
    first, first_seconds = first_s3_build
    s, seconds = build(clone(tmp_path / "b", checkpoint), "--cache", f"s3://{BUCKET}/shared")
    assert all(c["cache_hit"] for c in s["cells"]) and same(s["cells"]) == same(first["cells"])
    assert seconds <= 0.1 * first_seconds, (seconds, first_seconds)
    print(f"\ns3 cache: first build {first_seconds:.1f} s (4 cells built), clone B {seconds:.2f} s (4 hits)")

    client = aws["client"]
    victim = next(k for k in objects(client, "shared/") if k.endswith("/artifact/model.pte"))
    body = client.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=victim, Body=body[:-10] + b"0123456789")
    s, _ = build(clone(tmp_path / "c", checkpoint), "--cache", f"s3://{BUCKET}/shared")
    rebuilt = [c["cell"] for c in s["cells"] if not c["cache_hit"]]
    assert len(rebuilt) == 1 and victim.split("/")[1].startswith(
        next(c["key"] for c in s["cells"] if not c["cache_hit"])), (rebuilt, victim)
    assert same(s["cells"]) == same(first["cells"])
    assert len(intact_entries("shared", tmp_path / "check")) == 4
    assert victim not in objects(client, "shared/")  # the corrupt entry's files went with it


@pytest.mark.slow
def test_two_processes_build_one_cell_at_once(checkpoint, aws, tmp_path):
    """Two `edgeseq build` processes, same new cell, same s3:// cache, at the same time: no lock across
    machines, yet the store ends with one intact entry (one marker, one set of files)."""
    matrices = [clone(tmp_path / n, checkpoint, recipes=("race",)) for n in ("a", "b")]
    procs = [subprocess.Popen([sys.executable, "-m", "toolchain.cli", "build", str(m), "-o", str(m.parent / "out"),
                               "--cache", f"s3://{BUCKET}/race", "--json"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
             for m in matrices]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cells = [summary(o)["cells"][0] for o in outs]
    assert [c["status"] for c in cells] == ["ok", "ok"] and cells[0]["key"] == cells[1]["key"]
    keys = objects(aws["client"], "race/")
    assert sum(k.endswith("/entry.json") for k in keys) == 1
    assert len({k.split("/")[2] for k in keys if not k.endswith("/entry.json")}) == 1, keys  # the loser's went
    assert len(intact_entries("race", tmp_path / "check")) == 1
    print(f"\nrace: cache hits {[c['cache_hit'] for c in cells]} (both False: both built, one published)")


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, why", [
    (["--shard", "3/2"], "K must be between 1 and N"),
    (["--shard", "0/2"], "K must be between 1 and N"),
    (["--shard", "1/0"], "K must be between 1 and N"),
    (["--shard", "half"], "expected K/N"),
    (["--cache", "ftp://host/x"], "unknown scheme 'ftp'"),
    (["--cache", "s3://"], "not a valid bucket name"),
    (["--cache", "s3://Not_A!Bucket/p"], "not a valid bucket name"),
    (["--cache", "s3://edgeseq-ci/a//b"], "malformed prefix"),
    (["--cache", "s3://edgeseq-ci/p", "ENDPOINT=closed"], "cannot reach the store"),
    (["--cache", "s3://edgeseq-ci/p", "SECRET=wrong"], "access denied"),
    (["--cache", "s3://no-such-bucket/p"], "bucket 'no-such-bucket' not found"),
    (["--scheduler", "localhost:8786"], "expected tcp://HOST:PORT"),
    (["--scheduler", "tcp://127.0.0.1:CLOSED"], "cannot reach the Dask scheduler"),
])
def test_bad_scale_input(checkpoint, aws, monkeypatch, tmp_path, args, why):
    """One line, exit 2, nothing written (no output dir, no cache dir, no object in the store)."""
    matrix = clone(tmp_path / "a", checkpoint, recipes=("r1",))
    if "ENDPOINT=closed" in args:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    if "SECRET=wrong" in args:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    args = [a.replace("CLOSED", str(free_port())) for a in args if "=" not in a]
    if "--cache" not in args:
        args += ["--cache", str(tmp_path / "cache")]
    before = objects(aws["client"], "")
    code, text = invoke("build", matrix, "-o", tmp_path / "out", *args)
    assert code == 2 and text.startswith("error: ") and why in text and len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    assert objects(aws["client"], "") == before


# --- Dask -----------------------------------------------------------------------------------------------

@pytest.fixture
def dask_cluster(aws, tmp_path):
    """`dask scheduler` and two `dask worker` processes (no nanny: killing one kills it) on loopback,
    importing this tree, with the AWS environment of the loopback store."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": tmp_path}
    procs = {"scheduler": subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"], **quiet)}
    try:
        wait_port(port, procs["scheduler"])
        address = f"tcp://127.0.0.1:{port}"
        for name in ("w1", "w2"):
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                 "--name", name, "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp_path / name)],
                **quiet)
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        yield address, procs
    finally:  # nothing of theirs needs a clean shutdown: SIGKILL, no waiting on Dask's close timeouts
        for p in procs.values():
            p.kill()
            p.wait(timeout=30)


@pytest.mark.slow
def test_dask_cluster_build_survives_a_killed_worker(checkpoint, first_s3_build, dask_cluster, aws, tmp_path):
    """The 4-cell matrix plus a new cell r5 on a scheduler + 2 workers, into an s3:// prefix holding
    the 4 built cells (copied from clone A's): the worker building r5 is killed (SIGKILL) mid-cell;
    the scheduler runs r5 on the other worker; the build completes with the same cells as the local
    build, each naming its worker, and the store holds 5 intact entries (no half entry)."""
    from distributed import Client

    client = aws["client"]
    for key in objects(client, "shared/"):
        client.copy_object(Bucket=BUCKET, Key="dask/" + key.split("/", 1)[1],
                           CopySource={"Bucket": BUCKET, "Key": key})
    address, procs = dask_cluster
    matrix = clone(tmp_path / "a", checkpoint, recipes=(*RECIPES, "r5"))
    build_proc = subprocess.Popen(
        [sys.executable, "-m", "toolchain.cli", "build", str(matrix), "-o", str(tmp_path / "a" / "out"),
         "--cache", f"s3://{BUCKET}/dask", "--scheduler", address, "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    victim = None
    with Client(address, timeout=30) as c:
        end = time.time() + 300
        while victim is None and time.time() < end and build_proc.poll() is None:
            victim = next((a for a, keys in c.processing().items() if any(str(k).endswith("-4") for k in keys)),
                          None)  # r5 is cell 4 (0-based): its task is running there
            time.sleep(0.2)
        assert victim, "r5 never ran"
        time.sleep(3)  # well into the cell: loading, exporting
        killed = c.scheduler_info()["workers"][victim]["name"]
        procs[killed].kill()
    out, _ = build_proc.communicate(timeout=900)
    assert build_proc.returncode == 0, out
    s = summary(out)
    local, _ = first_s3_build
    assert same(s["cells"][:4]) == same(local["cells"]) and all(c["status"] == "ok" for c in s["cells"])
    survivor = {"w1": "w2", "w2": "w1"}[killed]
    assert all(c["worker"] in ("w1", "w2") for c in s["cells"]), s["cells"]
    assert s["cells"][4]["worker"] == survivor and not s["cells"][4]["cache_hit"], s["cells"][4]
    for c in s["cells"]:
        assert (Path(c["artifact"]) / "manifest.json").is_file()
    assert len(intact_entries("dask", tmp_path / "check")) == 5
    print(f"\ndask: workers {[c['worker'] for c in s['cells']]}, {killed} killed during r5, {s['seconds']} s")
