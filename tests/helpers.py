"""Tiny random checkpoints for tests: fixed seeds, written with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch


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
    from tiny_configs import tiny_config
    from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

    from toolchain.demo.dates import stream
    from toolchain.demo.train import _batch, build_tokenizer

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
