"""The eager split (our rewritten encode/decode modules) against transformers, before any runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from toolchain.calibrate import EagerSession
from toolchain.checkpoint import load_checkpoint
from toolchain.generate import greedy, pad

from helpers import VARIANTS, reference

S, T = 24, 12


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", [5, S])  # short, and exactly max_input_len
@pytest.mark.parametrize("cache_mode", ["buffer", "slot", "io"])
def test_split_matches_transformers(checkpoints, variant, length, cache_mode):
    src = load_checkpoint(checkpoints[variant])
    model = src.load_model()
    parts = src.adapter.build(model, S, T, cache_mode)
    rng = np.random.default_rng(length)
    ids = [int(x) for x in rng.integers(3, 45, size=length - 1)] + [1]
    ref_tokens, ref_logits = reference(model, ids, T)
    gen = greedy(EagerSession(parts), ids, max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0,
                 keep_logits=True, force_length=True)
    assert_allclose(np.stack(gen.logits), ref_logits, atol=parts.tolerance["eager"], rtol=1e-4)
    assert gen.tokens == ref_tokens
    assert len(set(ref_tokens)) >= 2, "model too flat to test token equality"


def test_encode_outputs_are_cross_kv_only(checkpoints):
    parts = load_checkpoint(checkpoints["v1.0"]).adapter.build(load_checkpoint(checkpoints["v1.0"]).load_model(), S, T)
    ids, mask = pad([5, 6, 1], S, 0)
    with torch.no_grad():
        outs = parts.encode(torch.from_numpy(ids), torch.from_numpy(mask))
    shapes = [tuple(o.shape) for o in outs]
    h, dh = parts.num_heads, parts.head_dim
    assert shapes[0] == (1, 1, S)
    assert shapes[1:] == [(h, dh, S), (h, S, dh)] * parts.num_layers
    assert all(o.is_contiguous() for o in outs)


def test_untied_head_is_kept_separate(checkpoints):
    src = load_checkpoint(checkpoints["v1.1-untied"])
    model = src.load_model()
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    parts = src.adapter.build(model, S, T)
    assert parts.decode.lm_head is not None
    torch.testing.assert_close(parts.decode.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("cache_mode", ["buffer", "slot", "io"])
@pytest.mark.parametrize("rules", [{}, {"min_new_tokens": 6, "suppress": [3, 7], "begin_suppress": [5],
                                        "forced_eos": 1, "max_new_tokens": 8}])
def test_next_token_in_program_equals_the_logits_path(checkpoints, cache_mode, rules):
    """decode with next_token (argmax(logits + token_bias) in the program) picks greedy's token on
    every step, under every decoding rule greedy applies, and its logits equal the plain program's."""
    src = load_checkpoint(checkpoints["v1.1-untied"])
    model = src.load_model()
    plain = src.adapter.build(model, S, T, cache_mode)
    chosen = src.adapter.build(model, S, T, cache_mode).with_next_token()
    assert chosen.decode_input_names()[-1] == "token_bias" and chosen.decode_output_names()[-1] == "next_token"
    ids = [9, 4, 12, 30, 8, 1]
    kw = dict(max_input_len=S, max_output_len=T, start_id=0, eos_id=1, pad_id=0, **rules)
    ref = greedy(EagerSession(plain), ids, keep_logits=True, **kw)
    checked = greedy(EagerSession(chosen), ids, keep_logits=True, **kw)  # program's choice vs logits path
    fast = greedy(EagerSession(chosen), ids, **kw)  # the program's choice alone, no logits read
    assert checked.argmax_checked == len(ref.tokens) + (ref.stopped == "eos") > 0
    assert checked.argmax_agreed == checked.argmax_checked
    assert fast.tokens == checked.tokens == ref.tokens and fast.stopped == ref.stopped
    assert fast.logits == [] and fast.argmax_checked == 0
    assert_allclose(np.stack(checked.logits), np.stack(ref.logits), atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_slot_attention_equals_attention_over_the_written_cache(softcap):
    """Cache mode "slot": attending over the cache as it was plus the step's own k/v (the cache's
    slot at `position` holding stale values, masked) gives what attention over the cache with the
    step written into that slot gives; write_slot then writes exactly that slot."""
    from toolchain.arch.cache import attend_with_step, position_onehot, slot_bias, write_slot
    from toolchain.arch.layers import attend, causal_mask, step_table

    g = torch.Generator().manual_seed(0)
    h, dh, t = 4, 8, 6
    rel = torch.randn(h, t, t, generator=g)  # a per-head bias plus the causal mask, as decode's tables hold them
    table = step_table(rel + causal_mask(t))
    positions = torch.arange(t)
    for pos in (0, 3, t - 1):
        position = torch.tensor([pos])
        cache_k, cache_v = torch.randn(h, dh, t, generator=g), torch.randn(h, t, dh, generator=g)  # stale everywhere
        q, k_new, v_new = (torch.randn(h, 1, dh, generator=g) for _ in range(3))
        onehot = position_onehot(position, t, positions)
        row = torch.nn.functional.linear(onehot, table).reshape(h, 1, t)
        got = attend_with_step(q, cache_k, cache_v, k_new.reshape(h, dh, 1), v_new, slot_bias(row, onehot), 0.5,
                               softcap)
        written_k, written_v = cache_k.clone(), cache_v.clone()
        write_slot(written_k, written_v, k_new.reshape(h, dh, 1), v_new, position)
        want = attend(q, written_k, written_v, row, 0.5, softcap)
        assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"position {pos}")
        others = [i for i in range(t) if i != pos]
        assert torch.equal(written_k[:, :, others], cache_k[:, :, others])
        assert torch.equal(written_v[:, pos], v_new[:, 0]) and torch.equal(written_k[:, :, pos], k_new[:, 0])
