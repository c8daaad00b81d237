"""Helpers shared by the tests (test files import from here, never from each other or from
conftest): paths, the eager transformers reference, the CLI, and tiny random checkpoints
(fixed seeds, written with save_pretrained)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "date-t5"
VARIANTS = ["v1.0", "v1.1", "v1.1-untied", "mt5"]

# Bad inputs tried by tests/test_bad_input.py, by section (every fuzzed example counts): the
# session ends with the total (conftest's terminal summary), so a CI log shows how much was
# tried and that none escaped.
BAD_INPUTS: Counter = Counter()


def reference(model: Any, ids: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """transformers' greedy generate for exactly `steps` tokens (EOS suppressed until then):
    (tokens after the decoder start, logits [steps, V])."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, 1:].tolist(), np.stack([step[0].numpy() for step in out.logits])


def invoke(*args: Any) -> tuple[int, str]:
    """`edgeseq ARGS` in process: (exit code, output)."""
    from click.testing import CliRunner

    from toolchain.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def probe_json(*args: Any) -> dict[str, Any]:
    """`edgeseq probe ARGS --json`, which must succeed, as a dict."""
    code, out = invoke("probe", *args, "--json")
    assert code == 0, out
    return json.loads(out)


def tiny_t5(out: Path, variant: str = "v1.0", seed: int = 0, train_steps: int = 40, untie: bool = False,
            **overrides) -> Path:
    return tiny_checkpoint(out, "t5", variant, seed, train_steps, untie, **overrides)


def tiny_checkpoint(out: Path, model_type: str, variant: str, seed: int = 0, train_steps: int = 40,
                    untie: bool = False, **overrides) -> Path:
    """A tiny checkpoint of any registered family with the demo's character tokenizer.

    Randomly initialised, then nudged with a few optimizer steps on the date task:
    an untrained tied-embedding T5 predicts its own input token forever (a fixed
    point), which would make "greedy tokens equal" a vacuous check. A few steps
    make the outputs vary from step to step; the weights stay essentially random.
    `untie` stores an lm_head different from the embedding (as T5 v1.1/Flan
    checkpoints do); transformers then loads the two untied.
    """
    from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

    from toolchain.demo.dates import stream
    from toolchain.demo.train import _batch, build_tokenizer

    from tiny_configs import tiny_config

    tok = build_tokenizer()
    cfg = tiny_config(model_type, variant, vocab_size=tok.get_vocab_size(), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(cfg)
    data = stream(seed, held_out=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        ids, mask, labels = _batch([next(data) for _ in range(16)], tok, torch)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    if untie:
        from safetensors.torch import load_file, save_file

        sd = load_file(out / "model.safetensors")
        gen = torch.Generator().manual_seed(seed)
        sd["lm_head.weight"] = sd["shared.weight"] + 0.5 * torch.randn(sd["shared.weight"].shape, generator=gen)
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    return out
