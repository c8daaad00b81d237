"""Train the bundled demo checkpoint: a tiny T5 that normalizes dates to ISO 8601.

    python -m toolchain.demo.train --out demo/date-t5

Deterministic for a given seed and thread count. Writes a `save_pretrained`
directory (config.json, model.safetensors, generation_config.json, tokenizer.json
and its HF config), the held-out `eval.jsonl`, and `training.json` (the log and
the held-out exact-match accuracy in eager PyTorch).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click


def build_tokenizer():
    """Character-level WordLevel tokenizer; lower-cases; appends </s>."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from .dates import ALPHABET

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in ALPHABET:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok


def _batch(pairs, tok, torch):
    enc = [tok.encode(x).ids for x, _ in pairs]
    lab = [tok.encode(y).ids for _, y in pairs]
    s, t = max(map(len, enc)), max(map(len, lab))
    ids = torch.zeros(len(pairs), s, dtype=torch.long)
    mask = torch.zeros(len(pairs), s, dtype=torch.long)
    labels = torch.full((len(pairs), t), -100, dtype=torch.long)
    for i, (e, lb) in enumerate(zip(enc, lab, strict=True)):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
        labels[i, : len(lb)] = torch.tensor(lb)
    return ids, mask, labels


def exact_match(model, tok, examples, torch, batch_size=128) -> float:
    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            ids, mask, _ = _batch([(e["input"], e["target"]) for e in chunk], tok, torch)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
            for row, e in zip(out.tolist(), chunk, strict=True):
                hits += tok.decode(row, skip_special_tokens=True) == e["target"]
    model.train()
    return hits / len(examples)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Checkpoint directory to write.")
@click.option("--seed", default=0, show_default=True, help="Seed for the weights and the data stream.")
@click.option("--max-steps", default=3000, show_default=True, help="Upper bound on optimizer steps.")
@click.option("--target-acc", default=0.995, show_default=True,
              help="Stop early once validation exact match reaches this.")
@click.option("--threads", default=2, show_default=True, help="torch intra-op threads.")
@click.option("--eval-size", default=400, show_default=True, help="Held-out examples written to eval.jsonl.")
def main(out_dir: str, seed: int, max_steps: int, target_acc: float, threads: int, eval_size: int) -> None:
    """Train the date-normalization T5 and save it with its held-out eval set."""
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from .dates import eval_set, stream

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    config = T5Config(  # type: ignore[call-arg]  # PreTrainedConfig kwargs
        vocab_size=tok.get_vocab_size(), d_model=128, d_ff=512, d_kv=32, num_heads=4,
        num_layers=2, num_decoder_layers=2, feed_forward_proj="relu", dropout_rate=0.0,
        relative_attention_num_buckets=32, relative_attention_max_distance=64,
        tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    model = T5ForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    warmup = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / max_steps, 1.0)))))
    train = stream(seed, held_out=False)
    # Early stopping looks at *training* dates (another seed), never at held-out ones.
    val_stream = stream(seed + 1, held_out=False)
    val: list[dict[str, str]] = [dict(zip(("input", "target"), next(val_stream), strict=True)) for _ in range(512)]
    log, t0 = [], time.time()
    model.train()
    for step in range(1, max_steps + 1):
        ids, mask, labels = _batch([next(train) for _ in range(128)], tok, torch)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 250 == 0:
            acc = exact_match(model, tok, val, torch)
            log.append({"step": step, "loss": round(loss.item(), 5), "val_exact_match": acc,
                        "seconds": round(time.time() - t0, 1)})
            click.echo(json.dumps(log[-1]))
            if acc >= target_acc and step >= 1500:
                break

    examples = eval_set(eval_size)
    held_out_acc = exact_match(model, tok, examples, torch)
    click.echo(f"held-out exact match: {held_out_acc:.4f}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, max_new_tokens=16)
    model.save_pretrained(out, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out)
    with open(out / "eval.jsonl", "w") as f:
        for e in examples:
            f.write(json.dumps(e) + "\n")
    (out / "training.json").write_text(json.dumps({
        "task": "date normalization to ISO 8601 (toolchain/demo/dates.py)",
        "seed": seed, "threads": threads, "params": sum(p.numel() for p in model.parameters()),
        "held_out_exact_match": held_out_acc, "eval_size": eval_size, "log": log,
        "torch": torch.__version__,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
