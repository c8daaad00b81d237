"""BART family (BART, Marian): eager split vs transformers, one ExecuTorch export, inspect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from toolchain.calibrate import EagerSession
from toolchain.checkpoint import load_checkpoint
from toolchain.generate import greedy

from helpers import reference

pytestmark = pytest.mark.slow  # trains and exports tiny BART/Marian checkpoints

S, T = 24, 12
FAMILY_VARIANTS = ["bart", "marian"]


def tiny_bart(out: Path, variant: str, seed: int = 0, train_steps: int = 40) -> Path:
    """A tiny BART/Marian checkpoint: random init plus a few AdamW steps so greedy outputs vary."""
    from helpers import tiny_checkpoint

    return tiny_checkpoint(out, variant, variant, seed, train_steps)


@pytest.fixture(scope="module")
def bart_checkpoints(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bart_ckpt")
    return {v: tiny_bart(base / v, v, seed=10 + i) for i, v in enumerate(FAMILY_VARIANTS)}


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_split_matches_transformers(bart_checkpoints, variant):
    src = load_checkpoint(bart_checkpoints[variant])
    assert src.adapter.family == "bart"
    model = src.load_model()
    for cache_mode in ("buffer", "slot", "io"):
        parts = src.adapter.build(model, S, T, cache_mode)
        for length in (5, S):  # short, and exactly max_input_len
            rng = np.random.default_rng(length)
            ids = [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]
            ref_tokens, ref_logits = reference(model, ids, T)
            gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1,
                         pad_id=0, keep_logits=True, force_length=True)
            assert_allclose(np.stack(gen.logits), ref_logits, atol=parts.tolerance["eager"], rtol=1e-4,
                            err_msg=f"{variant} {cache_mode} len={length}")
            assert gen.tokens == ref_tokens, (variant, cache_mode, length)
            assert len(set(ref_tokens)) >= 2, "model too flat to test token equality"


def test_inspect_recognises_family(bart_checkpoints):
    from click.testing import CliRunner

    from toolchain.cli import main

    for variant in FAMILY_VARIANTS:
        result = CliRunner().invoke(main, ["inspect", str(bart_checkpoints[variant])])
        assert result.exit_code == 0, result.output
        assert "bart" in result.output and variant in result.output, result.output


def test_export_executorch_verifies(bart_checkpoints, tmp_path):
    from toolchain.export import export
    from toolchain.specs import load_recipe, load_target
    from toolchain.verify import verify

    recipe = tmp_path / "small.yaml"
    recipe.write_text("format_version: 1\nname: small\ndescription: test\nmax_input_len: 24\nmax_output_len: 12\n"
                      "quantization: {}\ntolerance: {max_abs_logit_diff: 0.001}\n")
    art = export(load_checkpoint(bart_checkpoints["bart"]), load_recipe(str(recipe)),
                 load_target("executorch-xnnpack"), tmp_path / "art")
    report = verify(art)
    assert report.passed, report.failures
    assert report.sequence_match == 1.0, report.to_dict()
    # LayerNorm is written in XNNPACK's form: only the gather, position compare and a cast stay portable.
    for prog in ("encode", "decode"):
        assert art.manifest["delegation"][prog]["delegated_fraction"] >= 0.9, art.manifest["delegation"][prog]
        assert "aten_native_layer_norm_default" not in art.manifest["delegation"][prog]["portable_ops"]
