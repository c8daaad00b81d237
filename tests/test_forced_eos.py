"""forced_eos_token_id (opus-mt Marian and mBART generation configs have it) at the step that ends
generation: `edgeseq run --max-new-tokens N` prints what transformers' `generate(max_new_tokens=N)`
decodes to, with the Python Session and with the native runner.

transformers forces EOS when the output reaches its length limit, over `min_new_tokens`, and
counts a forced BOS (mBART's language code, the text families' decoder prompt) as a generated
token: with a forced BOS, N new tokens are the BOS, N - 2 ordinary tokens and EOS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from toolchain.cli import main

from helpers import tiny_checkpoint

pytestmark = pytest.mark.slow  # exports tiny Marian and mBART checkpoints

T = 12  # small_recipe's max_output_len
TEXTS = ["the 3rd of March, 2021", "5/6/1999"]
# family -> (model_type, variant, generation config overrides). <unk> (2) as mBART's forced BOS:
# a special token, skipped when decoding, as a language code is.
FAMILIES = {"marian": ("marian", "marian", {"forced_eos_token_id": 1}),
            "mbart": ("mbart", "mbart", {"forced_eos_token_id": 1, "forced_bos_token_id": 2})}


def _checkpoint(out: Path, family: str) -> Path:
    from transformers import GenerationConfig

    model_type, variant, gen = FAMILIES[family]
    ck = tiny_checkpoint(out, model_type, variant, seed=7, train_steps=60)
    cfg = GenerationConfig.from_pretrained(ck)
    for key, value in gen.items():
        setattr(cfg, key, value)
    cfg.save_pretrained(ck)
    return ck


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def exported(request, small_recipe, tmp_path_factory) -> tuple[str, Path, Path]:
    from toolchain.api import export

    family = request.param
    ck = _checkpoint(tmp_path_factory.mktemp("forced-eos") / family, family)
    art = export(ck, "executorch-xnnpack", str(small_recipe), tmp_path_factory.mktemp("forced-eos-art") / family)
    return family, ck, art.path


def _eager(ck: Path, text: str, **limits: int) -> str:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ck)
    model = AutoModelForSeq2SeqLM.from_pretrained(ck, local_files_only=True).eval()
    with torch.no_grad():
        out = model.generate(**tok(text, return_tensors="pt"), num_beams=1, do_sample=False, **limits)
    assert out.shape[1] <= T + 1, "the eager run must fit the artifact's cache"
    return tok.decode(out[0], skip_special_tokens=True)


def _run(art: Path, text: str, *args: str) -> str:
    res = CliRunner().invoke(main, ["run", str(art), text, *args])
    assert res.exit_code == 0, res.output
    return res.stdout.removesuffix("\n")


def _runners() -> list[str]:
    from toolchain import native
    from toolchain.errors import InputError

    try:
        native.runner_binary("host")
    except InputError:  # not built (`make runner`): the Python loop only
        return ["python"]
    return ["python", "native"]


def test_run_max_new_tokens_equals_generate(exported):
    family, ck, art = exported
    assert _eager(ck, TEXTS[0], max_new_tokens=T), "a model that says nothing tests nothing"
    for text in TEXTS:
        for n in (1, 2, 3, 5, 8, T):
            want = _eager(ck, text, max_new_tokens=n)
            for runner in _runners():
                got = _run(art, text, "--max-new-tokens", str(n), "--runner", runner)
                assert got == want, (family, runner, text, n)
        # EOS suppressed up to the limit: the forced EOS still ends it there.
        n = 5
        want = _eager(ck, text, max_new_tokens=n, min_new_tokens=n)
        for runner in _runners():
            got = _run(art, text, "--max-new-tokens", str(n), "--min-new-tokens", str(n), "--runner", runner)
            assert got == want, (family, runner, text, "min", n)
