"""Shared fixtures: tiny random checkpoints and their exported artifacts, built once per session."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# edgeseq's ExecuTorch kernels (backends/executorch/kernels.py) build into a directory of this
# run, not the user's cache: a test run leaves nothing behind outside its temporary files.
if "EDGESEQ_KERNEL_CACHE" not in os.environ:  # set by the controller; xdist workers inherit it
    import atexit
    import shutil
    import tempfile

    os.environ["EDGESEQ_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="edgeseq-kernels-")
    atexit.register(shutil.rmtree, os.environ["EDGESEQ_KERNEL_CACHE"], ignore_errors=True)
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

from helpers import BAD_INPUTS, DEMO, VARIANTS, tiny_t5  # noqa: E402


# `make test` runs the tests in two pytest-xdist workers: each worker counts its own bad-input
# cases and hands the counts to the controller when it ends (workeroutput), which prints the total.
def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # in a worker
        workeroutput["bad_inputs"] = dict(BAD_INPUTS)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown (and unused) when xdist is not loaded
def pytest_testnodedown(node, error):
    BAD_INPUTS.update(getattr(node, "workeroutput", {}).get("bad_inputs", {}))


def pytest_terminal_summary(terminalreporter):
    if not BAD_INPUTS or hasattr(terminalreporter.config, "workeroutput"):
        return
    failed = [r for r in terminalreporter.stats.get("failed", []) if "test_bad_input" in r.nodeid]
    parts = ", ".join(f"{section} {n}" for section, n in sorted(BAD_INPUTS.items()))
    verdict = (f"{len(failed)} test(s) FAILED" if failed else
               "each gave a one-line error (or was accepted as valid), none a traceback")
    terminalreporter.write_line(f"bad input: {sum(BAD_INPUTS.values())} cases tried ({parts}); {verdict}")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The v1.0 tiny checkpoint alone, for tests that need one (building all four takes longer)."""
    return tiny_t5(tmp_path_factory.mktemp("ckpt") / "v1_0", "v1.0", seed=0)


@pytest.fixture(scope="session")
def checkpoints(checkpoint, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ckpt")
    return {v: checkpoint if v == "v1.0" else
            tiny_t5(base / v.replace(".", "_"), v.removesuffix("-untied"), seed=i, untie=v.endswith("-untied"))
            for i, v in enumerate(VARIANTS)}


@pytest.fixture(scope="session")
def small_recipe(tmp_path_factory) -> Path:
    """A recipe with short lengths so tiny-model tests stay fast."""
    p = tmp_path_factory.mktemp("recipes") / "small.yaml"
    p.write_text("format_version: 1\nname: small\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                 "quantization: {}\ntolerance: {max_abs_logit_diff: 0.001}\n")
    return p


def _export_xnnpack(ck: Path, recipe: Path, out: Path) -> Path:
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    return export(load_checkpoint(ck), load_recipe(str(recipe)), load_target("executorch-xnnpack"), out).path


@pytest.fixture(scope="session")
def artifact(checkpoint, small_recipe, tmp_path_factory) -> Path:
    """The v1.0 tiny checkpoint exported once to executorch-xnnpack (for tests that need just one)."""
    return _export_xnnpack(checkpoint, small_recipe, tmp_path_factory.mktemp("art") / "v1_0")


@pytest.fixture(scope="session")
def artifacts(artifact, checkpoints, small_recipe, tmp_path_factory) -> dict[str, Path]:
    """Each tiny checkpoint exported once to executorch-xnnpack."""
    base = tmp_path_factory.mktemp("art")
    return {v: artifact if v == "v1.0" else _export_xnnpack(ck, small_recipe, base / ck.name)
            for v, ck in checkpoints.items()}


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory) -> Path:
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    out = tmp_path_factory.mktemp("demo") / "xnnpack-fp32"
    export(load_checkpoint(DEMO), load_recipe("fp32"), load_target("executorch-xnnpack"), out)
    return out


@pytest.fixture(scope="session")
def int8_embeddings_artifact(checkpoint, tmp_path_factory) -> Path:
    """int8 embeddings (quantized_decomposed::embedding_byte, from the quantized kernels library)
    and a shorter encode program (encode_8) in one small export (linears stay fp32: an 8da8w export
    takes twice as long and the runner feeds it no differently)."""
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    tmp = tmp_path_factory.mktemp("native")
    recipe = tmp / "q.yaml"
    recipe.write_text("format_version: 1\nname: q\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                      "quantization: {embeddings: int8-weight}\nencode_lengths: [8]\n"
                      "tolerance: {max_abs_logit_diff: 1.0e+9, min_sequence_match: 0.9}\n")
    return export(load_checkpoint(checkpoint), load_recipe(str(recipe)), load_target("executorch-xnnpack"),
                  tmp / "q").path
