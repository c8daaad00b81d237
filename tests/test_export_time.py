"""The executorch-xnnpack export-time cuts (provenance sharing, skipped no-op XNNPACK passes, the
programs lowered on two processes): each is scoped, undone afterwards, and leaves the artifact the
same bytes."""

from __future__ import annotations

import copy
import hashlib
import sys
from contextlib import nullcontext
from functools import partial
from importlib.metadata import version
from pathlib import Path

import pytest

from toolchain.backends.executorch import provenance, xnnpack_passes


def test_provenance_shared_only_inside_the_block():
    from torch.fx.traceback import NodeSource

    src = NodeSource(None, "p")
    with provenance.shared():
        with provenance.shared():  # nested: still on after the inner block ends
            pass
        copied = copy.deepcopy([src])
        assert copied[0] is src
    assert "__deepcopy__" not in vars(NodeSource)
    assert copy.deepcopy([src])[0] is not src


def test_skipping_restores_the_pass_manager():
    from executorch.backends.xnnpack._passes import XNNPACKPassManager

    before = XNNPACKPassManager.transform
    with xnnpack_passes.skipping():
        assert XNNPACKPassManager.transform is xnnpack_passes._transform
    assert XNNPACKPassManager.transform is before


@pytest.mark.skipif(version("executorch") != xnnpack_passes._PATTERN_OPS_VERSION,
                    reason="pattern ops are checked for one ExecuTorch release; others build the patterns")
def test_retrace_skipping_restores_torch_and_executorch():
    import importlib

    from executorch.exir.program import _program
    from torch.export import ExportedProgram

    from toolchain.backends.executorch import retraces

    run, replace = ExportedProgram.run_decompositions, _program._replace_aten_ops_with_transformed_ops
    # the module, not the operator the package exports under the same name
    call_delegate = importlib.import_module("torch._higher_order_ops.executorch_call_delegate")
    delegate = call_delegate.call_delegate_cpu
    with retraces.skipping():
        with retraces.skipping():
            pass
        assert ExportedProgram.run_decompositions is retraces._run_decompositions
        assert _program._replace_aten_ops_with_transformed_ops is retraces._replace
        assert call_delegate.call_delegate_cpu is retraces._delegate_outputs
    assert ExportedProgram.run_decompositions is run
    assert _program._replace_aten_ops_with_transformed_ops is replace
    assert call_delegate.call_delegate_cpu is delegate


@pytest.mark.slow
def test_delegate_outputs_from_the_recorded_shapes_match_a_run():
    """A delegate called on fake tensors: the recorded outputs' shapes, strides and dtypes are what
    running its original program gives, and real inputs still run it."""
    import torch
    from torch._higher_order_ops.executorch_call_delegate import executorch_call_delegate
    from torch._subclasses.fake_tensor import FakeTensorMode

    from toolchain.backends.executorch import retraces

    edge = _lower_xnnpack(_tiny_traces())
    gm = edge.exported_program("decode").graph_module
    lowered = next(m for m in gm.modules() if type(m).__name__ == "LoweredBackendModule")
    x = torch.randn(2, 8)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:  # the program's weights are real
        fake = mode.from_tensor(x)
        ran = executorch_call_delegate(lowered, fake)
        with retraces.skipping():
            recorded = executorch_call_delegate(lowered, fake)
    assert type(recorded) is type(ran) and len(recorded) == len(ran)
    for a, b in zip(recorded, ran, strict=True):
        assert (a.shape, a.stride(), a.dtype) == (b.shape, b.stride(), b.dtype)
    with retraces.skipping():
        real = executorch_call_delegate(lowered, x)
    assert not isinstance(real[0], type(fake)) and real[0].shape == ran[0].shape


def test_retrace_is_skipped_only_after_renaming_and_with_nothing_to_decompose():
    import torch

    from toolchain.backends.executorch import retraces

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.silu(x) + 1

    ep = torch.export.export(Net(), (torch.randn(3),), strict=False).run_decompositions({})
    silu = torch.ops.aten.silu.default
    with retraces.skipping():
        assert ep.run_decompositions({torch.ops.aten.tanh.default: None}) is not ep  # not renamed: runs
        retraces._renamed.add(ep)
        assert ep.run_decompositions({torch.ops.aten.tanh.default: None}) is ep  # nothing in it: skipped
        retraces._renamed.add(ep)
        table = torch.export.default_decompositions()
        assert silu in table
        assert ep.run_decompositions(table) is not ep  # silu is in the table: decomposed


def test_pattern_ops_occur_in_every_pattern():
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    for family, patterns in (("bilinear_2d", bilinear_2d.get_graphs()), ("sdpa", sdpa.get_graphs())):
        for p in patterns:
            present = xnnpack_passes._targets(p.graph)
            assert xnnpack_passes._needs(family, lambda: [])(present), (family, sorted(present))


def _digest(path: Path) -> dict[str, str]:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in ("model.pte", "weights.ptd")}


@pytest.mark.slow
def test_cuts_leave_the_int8_artifact_byte_identical(checkpoint, tmp_path, monkeypatch):
    from toolchain.backends.executorch import export as et_export
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    recipe = tmp_path / "int8-small.yaml"
    recipe.write_text("format_version: 1\nname: int8-small\ndescription: test\nmax_input_len: 24\n"
                      "max_output_len: 12\nquantization: {encoder: 8da8w, decoder: 8da8w, "
                      "embeddings: int8-weight, lm_head: 8da8w}\nencode_lengths: [8]\n"
                      "tolerance: {max_abs_logit_diff: 1.0e+9}\n")
    target = load_target("executorch-xnnpack")
    monkeypatch.setenv(et_export.parallel.ENV, "2")  # three programs: decode here, encode + encode_8 forked
    export(load_checkpoint(checkpoint), load_recipe(str(recipe)), target, tmp_path / "cut")
    monkeypatch.setattr(et_export.provenance, "shared", nullcontext)
    monkeypatch.setattr(et_export.xnnpack_passes, "skipping", nullcontext)
    monkeypatch.setattr(et_export.retraces, "skipping", nullcontext)
    monkeypatch.setenv(et_export.parallel.ENV, "1")
    export(load_checkpoint(checkpoint), load_recipe(str(recipe)), target, tmp_path / "plain")
    assert _digest(tmp_path / "cut") == _digest(tmp_path / "plain")


def test_lowering_groups_keep_decode_here_and_share_the_encodes():
    from toolchain.backends.executorch import parallel

    assert parallel.groups(["encode", "decode"]) == (["decode"], ["encode"])
    assert parallel.groups(["encode", "decode", "encode_64", "encode_128", "encode_256"]) == (
        ["decode", "encode_256"], ["encode", "encode_128", "encode_64"])
    assert parallel.groups(["encode"]) == (["encode"], [])


@pytest.mark.parametrize(("value", "jobs"), [("1", 1), ("2", 2), ("0", 1), ("two", 1)])
def test_lower_jobs_from_the_environment(monkeypatch, value, jobs):
    from toolchain.backends.executorch import parallel

    monkeypatch.setenv(parallel.ENV, value)
    assert parallel.jobs() == jobs


def test_deserialized_keyword_arguments_go_back_to_positions():
    """exir.serde returns arguments after a defaulted one as keywords; ExecuTorch's pattern passes
    (the int8 embedding's quant fusion) compare positions, so they are put back."""
    import torch

    from toolchain.backends.executorch import parallel

    g = torch.fx.Graph()
    x = g.placeholder("x")
    node = g.call_function(torch.ops.aten.clamp.default, (x,), {"min": -1.0, "max": 1.0})
    keep = g.call_function(torch.ops.aten.sum.dim_IntList, (x, [0]), {"dtype": torch.float32})
    g.output((node, keep))
    parallel._positional(g)
    assert node.args == (x, -1.0, 1.0) and node.kwargs == {}
    assert keep.args == (x, [0]) and keep.kwargs == {"dtype": torch.float32}  # keepdim absent: stays a keyword


def _tiny_traces() -> dict:
    import torch

    class Net(torch.nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            torch.manual_seed(width)
            self.a, self.b = torch.nn.Linear(8, width), torch.nn.Linear(width, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    x = (torch.randn(2, 8),)
    return {name: partial(torch.export.export, Net(w), x, strict=False) for name, w in (("encode", 16), ("decode", 32))}


def _lower_xnnpack(group: dict):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower({n: trace() for n, trace in group.items()}, partitioner=[XnnpackPartitioner()])


@pytest.mark.slow
def test_parallel_lowering_gives_the_same_program(monkeypatch):
    from toolchain.backends.executorch import parallel

    monkeypatch.setenv(parallel.ENV, "2")
    together = parallel.lower(_tiny_traces(), _lower_xnnpack, parallel.jobs())
    assert sorted(together.methods) == ["decode", "encode"]
    monkeypatch.setenv(parallel.ENV, "1")
    alone = parallel.lower(_tiny_traces(), _lower_xnnpack, parallel.jobs())
    assert together.to_executorch().buffer == alone.to_executorch().buffer


@pytest.mark.slow
def test_a_failed_child_is_lowered_here_and_a_failure_here_ends_the_child(monkeypatch):
    import os

    from toolchain.backends.executorch import parallel

    monkeypatch.setenv(parallel.ENV, "2")
    parent = os.getpid()

    def child_fails(group: dict):
        if os.getpid() != parent:
            raise RuntimeError("child")
        return _lower_xnnpack(group)

    notes: list[str] = []
    monkeypatch.setattr("toolchain.progress.note", notes.append)
    assert sorted(parallel.lower(_tiny_traces(), child_fails, 2).methods) == ["decode", "encode"]
    assert notes == ["lowering encode in a second process failed (RuntimeError: child); lowering them here"]

    def parent_fails(group: dict):
        if os.getpid() == parent:
            raise ValueError("here")
        return _lower_xnnpack(group)

    forked: list[int] = []
    fork = os.fork

    def recording_fork() -> int:
        pid = fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    with pytest.raises(ValueError, match="here"):
        parallel.lower(_tiny_traces(), parent_fails, 2)
    assert len(forked) == 1
    with pytest.raises(ChildProcessError):  # that child was killed and reaped: no longer ours to wait for
        os.waitpid(forked[0], os.WNOHANG)


def _gone(pid: int) -> bool:
    """Ended (or a zombie nobody reaped yet: PID 1 of a container may not)."""
    from pathlib import Path

    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child is forked on Linux only")
def test_a_killed_export_takes_its_lowering_child_along(tmp_path):
    import subprocess
    import time

    marker = tmp_path / "child.pid"
    script = (f"import os, sys, time\nsys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
              "from toolchain.backends.executorch import parallel\nparent = os.getpid()\n"
              "def group(traces):\n    if os.getpid() != parent:\n"
              f"        open({str(marker)!r}, 'w').write(str(os.getpid()))\n    time.sleep(120)\n"
              "parallel.lower({'encode': None, 'decode': None}, group, 2)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(marker.read_text())
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)
