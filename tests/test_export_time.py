"""The executorch-xnnpack export-time cuts (provenance sharing, skipped no-op XNNPACK passes):
each is scoped, undone afterwards, and leaves the artifact the same bytes."""

from __future__ import annotations

import copy
import hashlib
from contextlib import nullcontext
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
                      "embeddings: int8-weight, lm_head: 8da8w}\ntolerance: {max_abs_logit_diff: 1.0e+9}\n")
    target = load_target("executorch-xnnpack")
    export(load_checkpoint(checkpoint), load_recipe(str(recipe)), target, tmp_path / "cut")
    monkeypatch.setattr(et_export.provenance, "shared", nullcontext)
    monkeypatch.setattr(et_export.xnnpack_passes, "skipping", nullcontext)
    export(load_checkpoint(checkpoint), load_recipe(str(recipe)), target, tmp_path / "plain")
    assert _digest(tmp_path / "cut") == _digest(tmp_path / "plain")
