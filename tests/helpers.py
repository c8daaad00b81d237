"""Tiny random checkpoints for tests: fixed seeds, written with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_t5(out: Path, variant: str = "v1.0", seed: int = 0, **overrides) -> Path:
    """A random T5-family checkpoint with the demo's character tokenizer.

    Weights are redrawn with a larger spread than T5's init so greedy outputs vary
    from step to step (a near-uniform model emits one token forever and would make
    token-equality checks weak).
    """
    from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

    from toolchain import arch
    from toolchain.demo.train import build_tokenizer

    tok = build_tokenizer()
    cfg = arch.get("t5").tiny_config(variant, vocab_size=tok.get_vocab_size(), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0.0, 0.4 if "relative_attention_bias" not in name else 1.0)
    model.save_pretrained(out, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    return out
