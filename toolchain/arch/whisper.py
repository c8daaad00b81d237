"""Whisper family (speech -> text): log-mel features in, pre-norm transformer decoder out.

What differs from BART (toolchain/arch/bart.py):

* The encode program takes ``input_features float32[1, n_mels, frames]`` (log-mel,
  toolchain/audio.py), frames = 2 * max_source_positions, not token ids. Two Conv1d
  (kernel 3; the second with stride 2) with exact GELU make the encoder's
  [1, S = max_source_positions, D] sequence, plus fixed position rows enc_pos [S, D].
  Whisper has no encoder mask: encode returns no ``cross_bias`` and decode takes none
  (``Seq2SeqParts.cross_bias = False``). The encoder length is the model's, so the
  recipe's ``max_input_len`` (text tokens) does not apply.
* Pre-norm layers (LayerNorm before attention / MLP, residual after) and a final
  LayerNorm on both stacks; key projections have no bias; scores scaled by 1/sqrt(Dh).
* Decoder positions are learned rows, taken per step as
  ``F.linear(onehot(position), dec_pos_table [D, T])`` (no gather).
* The head is ``proj_out``, tied to the decoder embedding; no logits bias or scaling.
* Generation is prompted: decoder_start, then language, task and <|notimestamps|> as
  the generation config says (``decoder_prompt``; language ``None`` = detected from the
  first step's logits over the language tokens, as WhisperForConditionalGeneration.generate
  does), with its ``suppress_tokens`` and ``begin_suppress_tokens``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from ..errors import InputError
from ..split import (NEG, LayerNorm, Seq2SeqParts, TensorSpec, activation, attend, cross_kv_outputs, decode_step,
                     frozen_embedding, frozen_linear, heads_first, heads_last, register_cache,
                     update_cache)


def _conv(conv: nn.Conv1d) -> nn.Conv1d:
    out = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
                    padding=conv.padding[0])
    out.weight = nn.Parameter(conv.weight.detach().clone().float(), requires_grad=False)
    out.bias = nn.Parameter(conv.bias.detach().clone().float(), requires_grad=False)
    return out


class _EncoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, heads: int, act: str):
        super().__init__()
        sa = layer.self_attn
        self.heads, self.scale = heads, sa.head_dim ** -0.5
        self.norm1 = LayerNorm(layer.self_attn_layer_norm)
        self.q, self.k, self.v, self.o = (frozen_linear(sa.q_proj), frozen_linear(sa.k_proj),
                                          frozen_linear(sa.v_proj), frozen_linear(sa.out_proj))
        self.norm2 = LayerNorm(layer.final_layer_norm)
        self.fc1, self.fc2 = frozen_linear(layer.fc1), frozen_linear(layer.fc2)
        self.act = activation(act)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)  # [1, S, D], pre-norm
        q, k, v = (heads_first(p(h), self.heads) for p in (self.q, self.k, self.v))
        x = x + self.o(heads_last(attend(q, k.transpose(1, 2), v, bias, self.scale)))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class WhisperEncode(nn.Module):
    """input_features [1, n_mels, 2S] -> per-layer cross K/V (no cross_bias: no encoder mask)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        cfg = model.config
        enc, dec = model.model.encoder, model.model.decoder
        self.heads = cfg.decoder_attention_heads
        self.head_dim = cfg.d_model // cfg.decoder_attention_heads
        self.conv1, self.conv2 = _conv(enc.conv1), _conv(enc.conv2)
        self.register_buffer("enc_pos", enc.embed_positions.weight.detach().clone().float())  # [S, D]
        self.layers = nn.ModuleList(_EncoderLayer(l, cfg.encoder_attention_heads, cfg.activation_function)
                                    for l in enc.layers)
        self.final_norm = LayerNorm(enc.layer_norm)
        self.cross_k = nn.ModuleList(frozen_linear(l.encoder_attn.k_proj) for l in dec.layers)
        self.cross_v = nn.ModuleList(frozen_linear(l.encoder_attn.v_proj) for l in dec.layers)

    def forward(self, input_features: torch.Tensor):
        x = F.gelu(self.conv1(input_features))  # [1, D, 2S]
        x = F.gelu(self.conv2(x))  # [1, D, S]
        x = x.transpose(1, 2) + self.enc_pos  # [1, S, D]
        for layer in self.layers:
            x = layer(x, None)  # no encoder mask
        x = self.final_norm(x)
        return cross_kv_outputs(x, None, self.cross_k, self.cross_v, self.heads, self.head_dim)


class _DecoderLayer(nn.Module):
    def __init__(self, layer: nn.Module, heads: int, act: str):
        super().__init__()
        sa, ca = layer.self_attn, layer.encoder_attn
        self.heads, self.head_dim, self.scale = heads, sa.head_dim, sa.head_dim ** -0.5
        self.norm1 = LayerNorm(layer.self_attn_layer_norm)
        self.q, self.k, self.v, self.o = (frozen_linear(sa.q_proj), frozen_linear(sa.k_proj),
                                          frozen_linear(sa.v_proj), frozen_linear(sa.out_proj))
        self.norm2 = LayerNorm(layer.encoder_attn_layer_norm)
        self.cq, self.co = frozen_linear(ca.q_proj), frozen_linear(ca.out_proj)
        self.norm3 = LayerNorm(layer.final_layer_norm)
        self.fc1, self.fc2 = frozen_linear(layer.fc1), frozen_linear(layer.fc2)
        self.act = activation(act)

    def forward(self, x, onehot, self_bias, ck, cv, cache_k, cache_v, in_place: bool):
        h, dh = self.heads, self.head_dim
        t = cache_k.shape[-1]
        y = self.norm1(x)  # [1, 1, D]
        q = self.q(y).reshape(h, 1, dh)
        k_all = update_cache(cache_k, self.k(y).reshape(h, dh, 1), onehot.reshape(1, 1, t), in_place)  # [H, Dh, T]
        v_all = update_cache(cache_v, self.v(y).reshape(h, 1, dh), onehot.reshape(1, t, 1), in_place)  # [H, T, Dh]
        x = x + self.o(attend(q, k_all, v_all, self_bias, self.scale).reshape(1, 1, h * dh))
        q = self.cq(self.norm2(x)).reshape(h, 1, dh)
        ctx = attend(q, ck.reshape(ck.shape[1:]), cv.reshape(cv.shape[1:]), None, self.scale)  # no encoder mask
        x = x + self.co(ctx.reshape(1, 1, h * dh))
        return x + self.fc2(self.act(self.fc1(self.norm3(x)))), k_all, v_all


class WhisperDecode(nn.Module):
    """One decoder step: token [1,1], position [1], cross K/V -> logits [1, V] (cache modes as T5Decode)."""

    def __init__(self, model: nn.Module, embed: nn.Embedding, max_output_len: int, cache_mode: str = "buffer"):
        super().__init__()
        cfg = model.config
        dec = model.model.decoder
        h, t = cfg.decoder_attention_heads, max_output_len
        dh = cfg.d_model // h
        self.heads, self.max_output_len, self.cache_mode = h, t, cache_mode
        self.embed = embed
        rows = dec.embed_positions.weight
        if t > rows.shape[0]:
            raise InputError(f"max_output_len {t} exceeds the model's {rows.shape[0]} decoder positions "
                             f"(config.json max_target_positions); lower the recipe's max_output_len")
        self.register_buffer("dec_pos_table", rows[:t].detach().clone().float().T.contiguous())  # [D, T]
        self.layers = nn.ModuleList(_DecoderLayer(l, h, cfg.activation_function) for l in dec.layers)
        self.final_norm = LayerNorm(dec.layer_norm)
        head = model.get_output_embeddings()
        tied = head.weight.data_ptr() == dec.embed_tokens.weight.data_ptr()
        self.lm_head = None if tied else frozen_linear(head)
        causal = torch.triu(torch.full((t, t), NEG), diagonal=1)  # [T(q), T(k)]
        self.register_buffer("causal_table", causal.T.contiguous())  # [T(k), T(q)]
        register_cache(self, len(self.layers), h, dh, t, cache_mode)

    def forward(self, token, position, *rest):
        t = self.max_output_len
        cross_kv, caches, onehot = decode_step(self, position, rest)  # onehot [1, T]
        self_bias = F.linear(onehot, self.causal_table).reshape(1, 1, t)
        x = self.embed(token) + F.linear(onehot, self.dec_pos_table).reshape(1, 1, -1)  # [1, 1, D]
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, k_all, v_all = layer(x, onehot, self_bias, cross_kv[2 * i], cross_kv[2 * i + 1],
                                    caches[2 * i], caches[2 * i + 1], self.cache_mode == "buffer")
            new_caches += [k_all, v_all]
        x = self.final_norm(x).reshape(1, -1)
        logits = F.linear(x, self.embed.weight) if self.lm_head is None else self.lm_head(x)
        return logits if self.cache_mode == "buffer" else (logits, *new_caches)


def _language_id(language: str, lang_to_id: dict[str, int]) -> int:
    """generation_config.language ("en", "english" or "<|en|>") -> its token id, as Whisper's generate."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    lang = language.lower()
    if lang in lang_to_id:
        token = lang
    elif lang in TO_LANGUAGE_CODE:
        token = f"<|{TO_LANGUAGE_CODE[lang]}|>"
    elif lang in TO_LANGUAGE_CODE.values():
        token = f"<|{lang}|>"
    else:
        raise InputError(f"generation_config.language {language!r} is not a Whisper language")
    if token not in lang_to_id:
        raise InputError(f"generation_config.language {language!r}: {token} is not in generation_config.lang_to_id")
    return int(lang_to_id[token])


def decoder_prompt(gen, cfg) -> tuple[list[int | None], list[int]]:
    """The tokens WhisperForConditionalGeneration.generate feeds after decoder_start (its
    `_retrieve_init_tokens`, for one language): (prompt, language token ids). A None entry is
    the language it detects from the first step's logits (argmax over the language tokens)."""
    if getattr(gen, "return_timestamps", False):
        raise InputError("generation_config.return_timestamps is set: timestamp decoding is not supported "
                         "by the exported greedy loop; set it to false")
    task, language = getattr(gen, "task", None), getattr(gen, "language", None)
    if isinstance(language, (list, tuple)):
        raise InputError("generation_config.language is a list (one per batch item); give one language")
    lang_to_id = getattr(gen, "lang_to_id", None) or {}
    task_ids = {int(v) for v in (getattr(gen, "task_to_id", None) or {}).values()}
    detect = object()  # placeholder: the language generate detects
    prompt: list[Any] = []
    if task is None and language is None:  # the deprecated forced_decoder_ids, as generate reads them
        forced = getattr(gen, "forced_decoder_ids", None) or getattr(cfg, "forced_decoder_ids", None) or []
        if forced and forced[0][0] == 1:  # entries for positions 1, 2, ... (others are ignored, as generate does)
            i = 1
            while forced and forced[0][0] == i:
                prompt.append(forced[0][1])
                forced, i = forced[1:], i + 1
            if forced:
                raise InputError(f"generation_config.forced_decoder_ids {forced} do not follow Whisper's prompt "
                                 f"pattern (one entry per position 1, 2, ...)")
    lang_undefined = not prompt or prompt[0] is None
    lang = _language_id(language, lang_to_id) if language is not None else (
        detect if lang_to_id and lang_undefined else None)
    if lang is not None:
        if prompt:
            prompt[0] = lang
        else:
            prompt.append(lang)
    if task is not None:
        task_to_id = getattr(gen, "task_to_id", None) or {}
        if task not in task_to_id:
            raise InputError(f"generation_config.task {task!r} is not in generation_config.task_to_id")
        tid = int(task_to_id[task])
        prompt = [tid if t in task_ids else t for t in prompt + [tid]]
    elif language is not None and task_ids and not any(t in task_ids for t in prompt):
        prompt.append(int(gen.task_to_id["transcribe"]))
    no_ts = getattr(gen, "no_timestamps_token_id", None)
    if no_ts is not None and (prompt[-1] if prompt else None) != no_ts:
        prompt.append(int(no_ts))
    prompt = [None if t is detect else int(t) for t in prompt if t is not None]
    return prompt, sorted(int(i) for i in lang_to_id.values()) if None in prompt else []


class WhisperAdapter:
    family = "whisper"
    model_types = ("whisper",)
    auto_model = "AutoModelForSpeechSeq2Seq"  # transformers' auto class that loads the checkpoint
    input_kind = "log_mel"
    tolerance = {"eager": 1e-4, "executorch": 1e-3}

    def describe(self, cfg: dict[str, Any]) -> dict[str, Any]:
        d, heads = cfg.get("d_model"), cfg.get("decoder_attention_heads")
        return {
            "family": self.family, "variant": "whisper (log-mel audio input)",
            "encoder_layers": cfg.get("encoder_layers"), "decoder_layers": cfg.get("decoder_layers"),
            "heads": heads, "d_model": d, "d_ff": cfg.get("decoder_ffn_dim"),
            "head_dim": d // heads if d and heads else None, "vocab_size": cfg.get("vocab_size"),
            "activation": cfg.get("activation_function"), "input": "log_mel",
            "n_mels": cfg.get("num_mel_bins"), "encoder_positions": cfg.get("max_source_positions"),
            "max_positions": cfg.get("max_target_positions"),
        }

    def build(self, model: nn.Module, max_input_len: int, max_output_len: int,
              cache_mode: str = "buffer") -> Seq2SeqParts:
        """max_input_len does not apply: the encoder length is the model's (max_source_positions)."""
        cfg = model.config
        emb = frozen_embedding(model.model.decoder.embed_tokens.weight)
        enc = WhisperEncode(model).eval()
        dec = WhisperDecode(model, emb, max_output_len, cache_mode).eval()
        gen = model.generation_config
        start = gen.decoder_start_token_id if gen.decoder_start_token_id is not None else cfg.decoder_start_token_id
        eos = gen.eos_token_id if gen.eos_token_id is not None else cfg.eos_token_id
        pad = gen.pad_token_id if gen.pad_token_id is not None else cfg.pad_token_id
        prompt, languages = decoder_prompt(gen, cfg)
        if len(prompt) >= max_output_len:
            raise InputError(f"max_output_len {max_output_len} leaves no room after the {len(prompt) + 1} "
                             f"prompt tokens")
        s, frames = cfg.max_source_positions, 2 * cfg.max_source_positions
        h = cfg.decoder_attention_heads
        return Seq2SeqParts(
            encode=enc, decode=dec, num_layers=len(dec.layers), num_heads=h, head_dim=cfg.d_model // h,
            vocab_size=cfg.vocab_size, max_input_len=max_input_len, max_output_len=max_output_len,
            decoder_start_token_id=int(start), eos_token_id=int(eos[0] if isinstance(eos, (list, tuple)) else eos),
            pad_token_id=int(pad if pad is not None else 0), cache_mode=cache_mode, tolerance=dict(self.tolerance),
            encode_spec=[TensorSpec("input_features", "float32", (1, cfg.num_mel_bins, frames))],
            input={"kind": "log_mel", "n_mels": cfg.num_mel_bins, "frames": frames},
            cross_len=s, cross_bias=False, decoder_prompt=prompt, language_token_ids=languages,
            suppress_tokens=[int(t) for t in (gen.suppress_tokens or [])],
            begin_suppress_tokens=[int(t) for t in (gen.begin_suppress_tokens or [])])

    def tiny_config(self, variant: str = "whisper", **overrides: Any):
        """A tiny random Whisper: 8 mel bins, 100 frames (1 s at 16 kHz, hop 160) -> 50 encoder positions."""
        from transformers import WhisperConfig

        if variant != "whisper":
            raise ValueError(f"unknown Whisper variant {variant!r}; choose from whisper")
        base = dict(vocab_size=64, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=2,
                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                    max_source_positions=50, max_target_positions=32, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                    decoder_start_token_id=1, suppress_tokens=[], begin_suppress_tokens=[0])
        return WhisperConfig(**{**base, **overrides})


register(WhisperAdapter())
