"""The one calibration tracer (toolchain.calibrate): both programs' inputs, recorded from the
fp32 split run by the same greedy loop as run/verify."""

from __future__ import annotations

import numpy as np
import torch

from toolchain.calibrate import EagerSession, trace
from toolchain.checkpoint import load_checkpoint
from toolchain.generate import greedy

S, T = 24, 10
INPUTS = ["the 3rd of March, 2021", "4 july 1999", "1/2/2003", "march 5th"]


def _parts(checkpoint, cache_mode="io"):
    src = load_checkpoint(checkpoint)
    return src, src.adapter.build(src.load_model(), S, T, cache_mode)


def test_trace_records_each_greedy_step(checkpoint):
    src, parts = _parts(checkpoint)
    tok = src.load_tokenizer()
    calibration = [tok.encode(s).ids for s in INPUTS]
    samples = trace(parts, calibration)
    assert len(samples.encode) == len(INPUTS)
    assert [tuple(t.shape) for t in samples.encode[0]] == [(1, S), (1, S)]
    names = parts.decode_input_names()
    assert all(len(step) == len(names) for step in samples.decode)
    assert sum(int(step[1]) == 0 for step in samples.decode) == len(INPUTS)  # one run per input, from slot 0
    n_cross = len(parts.encode_output_names())
    # Replaying a recorded step gives the next recorded step: its token is the argmax and its
    # caches are this step's outputs (what a quantizer sees is what the model computes).
    checked = 0
    for a, b in zip(samples.decode, samples.decode[1:], strict=False):
        if int(b[1]) == 0:
            continue
        with torch.no_grad():
            logits, *cache = parts.decode(*a)
        assert int(b[0][0, 0]) == int(logits.reshape(-1).argmax())
        for got, want in zip(cache, b[2 + n_cross:], strict=True):
            torch.testing.assert_close(got, want)
        checked += 1
    assert checked >= len(samples.decode) // 2
    feeds = samples.feeds("decode", names)
    assert set(feeds[0]) == set(names) and feeds[0]["token"].dtype == np.int64


def test_trace_keeps_steps_spread_over_positions(checkpoint):
    src, parts = _parts(checkpoint)
    tok = src.load_tokenizer()
    calibration = [tok.encode(s).ids for s in INPUTS]
    full = trace(parts, calibration)
    few = trace(parts, calibration, max_decode=5)
    assert len(few.decode) == 5 < len(full.decode)
    assert torch.equal(few.decode[0][1], full.decode[0][1]) and torch.equal(few.decode[-1][1], full.decode[-1][1])


def test_eager_session_runs_the_greedy_loop_in_both_cache_modes(checkpoint):
    src, io_parts = _parts(checkpoint, "io")
    _, buf_parts = _parts(checkpoint, "buffer")
    ids = src.load_tokenizer().encode(INPUTS[0]).ids
    kw = dict(max_input_len=S, max_output_len=T, start_id=io_parts.decoder_start_token_id,
              eos_id=io_parts.eos_token_id, pad_id=io_parts.pad_token_id, keep_logits=True)
    a = greedy(EagerSession(io_parts), ids, **kw)
    b = greedy(EagerSession(buf_parts), ids, **kw)
    assert a.tokens == b.tokens and a.tokens
    np.testing.assert_allclose(np.stack(a.logits), np.stack(b.logits), atol=1e-5)
