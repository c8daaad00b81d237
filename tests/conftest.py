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
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

from helpers import tiny_t5  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "date-t5"
VARIANTS = ["v1.0", "v1.1", "v1.1-untied", "mt5"]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ckpt")
    return {v: tiny_t5(base / v.replace(".", "_"), v.removesuffix("-untied"), seed=i, untie=v.endswith("-untied"))
            for i, v in enumerate(VARIANTS)}


@pytest.fixture(scope="session")
def small_recipe(tmp_path_factory) -> Path:
    """A recipe with short lengths so tiny-model tests stay fast."""
    p = tmp_path_factory.mktemp("recipes") / "small.yaml"
    p.write_text("format_version: 1\nname: small\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                 "quantization: {}\ntolerance: {max_abs_logit_diff: 0.001}\n")
    return p


@pytest.fixture(scope="session")
def artifacts(checkpoints, small_recipe, tmp_path_factory) -> dict[str, Path]:
    """Each tiny checkpoint exported once to executorch-xnnpack."""
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    base = tmp_path_factory.mktemp("art")
    out = {}
    for v, ck in checkpoints.items():
        art = export(load_checkpoint(ck), load_recipe(str(small_recipe)), load_target("executorch-xnnpack"),
                     base / ck.name)
        out[v] = art.path
    return out


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory) -> Path:
    from toolchain.checkpoint import load_checkpoint
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target

    out = tmp_path_factory.mktemp("demo") / "xnnpack-fp32"
    export(load_checkpoint(DEMO), load_recipe("fp32"), load_target("executorch-xnnpack"), out)
    return out
