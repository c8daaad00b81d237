"""Whisper family (speech -> text): log-mel features in, pre-norm transformer decoder out.

What differs from BART (toolchain/arch/bart.py):

* The encode program takes ``input_features float32[1, n_mels, frames]`` (log-mel,
  toolchain/audio.py), frames = 2 * max_source_positions, not token ids. Two Conv1d
  (kernel 3; the second with stride 2) with exact GELU make the encoder's
  [1, S = max_source_positions, D] sequence, plus fixed position rows enc_pos [S, D].
  Whisper has no encoder mask: encode returns no ``cross_bias`` and decode takes none
  (``Seq2SeqParts.cross_bias = False``). The encoder length is the model's, so the
  recipe's ``max_input_len`` (text tokens) does not apply.
* BART's layers (arch/bart.py), pre-norm (LayerNorm before attention / MLP, residual after)
  and a final LayerNorm on both stacks; key projections have no bias.
* Decoder positions are learned rows, taken per step as
  ``F.linear(onehot(position), pos_table [D, T])`` (no gather).
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

from ..errors import InputError
from ..prompt import TaskPrompt
from ..prompt import build as build_prompt
from ..schemes import Component
from ..split import TensorSpec
from .bart import causal_table, decoder_layer, encoder_layer
from .base import Adapter, Model, SpecialTokens, first_id, register, tied_head
from .layers import EncoderLayer, LayerNorm, frozen_embedding, frozen_linear
from .programs import EncoderStack, UnmaskedDecoder


def _conv(conv: Any) -> nn.Conv1d:
    """A frozen fp32 copy of one of Whisper's Conv1d (kernel 3, padding 1, with bias)."""
    out = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
                    padding=conv.padding[0])
    out.weight = nn.Parameter(conv.weight.detach().clone().float(), requires_grad=False)
    out.bias = nn.Parameter(conv.bias.detach().clone().float(), requires_grad=False)
    return out


class WhisperEncoder(EncoderStack):
    """input_features [1, n_mels, 2S] -> per-layer cross K/V (no cross_bias: no encoder mask)."""

    enc_pos: torch.Tensor

    def __init__(self, model: Model, layers: list[EncoderLayer]):
        enc, dec = model.model.encoder, model.model.decoder
        h = model.config.decoder_attention_heads  # cross K/V are laid out for the decoder's heads
        super().__init__(layers, LayerNorm(enc.layer_norm),
                         [frozen_linear(layer.encoder_attn.k_proj) for layer in dec.layers],
                         [frozen_linear(layer.encoder_attn.v_proj) for layer in dec.layers],
                         h, model.config.d_model // h)
        self.conv1, self.conv2 = _conv(enc.conv1), _conv(enc.conv2)
        self.register_buffer("enc_pos", enc.embed_positions.weight.detach().clone().float())  # [S, D]

    def forward(self, input_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.gelu(self.conv1(input_features))  # [1, D, 2S]
        x = F.gelu(self.conv2(x))  # [1, D, S]
        return self.encode(x.transpose(1, 2) + self.enc_pos, None)  # [1, S, D], no encoder mask


def task_prompt(gen, cfg) -> TaskPrompt:
    """The generation config's prompt fields (the manifest's tokens.task_prompt): what building
    the prompt for any language and task takes at run time, without transformers."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    language = getattr(gen, "language", None)
    if isinstance(language, (list, tuple)):
        raise InputError("generation_config.language is a list (one per batch item); give one language")
    lang_to_id = {str(k): int(v) for k, v in (getattr(gen, "lang_to_id", None) or {}).items()}
    forced = getattr(gen, "forced_decoder_ids", None) or getattr(cfg, "forced_decoder_ids", None) or []
    multilingual = getattr(gen, "is_multilingual", None)
    no_ts = getattr(gen, "no_timestamps_token_id", None)
    return TaskPrompt(
        lang_to_id=lang_to_id, task_to_id={str(k): int(v) for k, v in (getattr(gen, "task_to_id", None) or {}).items()},
        no_timestamps_token_id=None if no_ts is None else int(no_ts),
        is_multilingual=None if multilingual is None else bool(multilingual), language=language,
        task=getattr(gen, "task", None),
        forced_decoder_ids=tuple((int(p), None if t is None else int(t)) for p, t in forced),
        language_names={name: code for name, code in TO_LANGUAGE_CODE.items() if f"<|{code}|>" in lang_to_id})


def decoder_prompt(gen, cfg) -> tuple[list[int | None], list[int]]:
    """The tokens WhisperForConditionalGeneration.generate feeds after decoder_start (its
    `_retrieve_init_tokens`, for one language): (prompt, language token ids). A None entry is
    the language it detects from the first step's logits (argmax over the language tokens).
    toolchain/prompt.py builds it; `run --language/--task` builds others the same way."""
    if getattr(gen, "return_timestamps", False):
        raise InputError("generation_config.return_timestamps is set: timestamp decoding is not supported "
                         "by the exported greedy loop; set it to false")
    return build_prompt(task_prompt(gen, cfg), label="generation_config.language")


@register
class Whisper(Adapter):
    family = "whisper"
    model_types = ("whisper",)
    auto_model = "AutoModelForSpeechSeq2Seq"
    input_kind = "log_mel"
    # The audio encoder does not survive 4-bit weights: on tiny.en and the speech set (36 clips),
    # 8da4w on the encoder alone took WER from 32.3% to 40.0%, on the decoder alone to 33.5%
    # (benchmarks/quant_study.py, table in benchmarks/RESULTS.md). 8 bits instead of 4 for its
    # encoder linears cost 4 MB on tiny.en.
    keep_8bit = {Component.ENCODER: "4-bit encoder weights cost Whisper tiny.en 7.7 WER points on the "
                                    "speech set (benchmarks/RESULTS.md)"}

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

    def programs(self, model: Model, max_input_len: int, max_output_len: int,
                 cache_mode: str) -> tuple[WhisperEncoder, UnmaskedDecoder]:
        """max_input_len does not apply: the encoder length is the model's (max_source_positions)."""
        cfg = model.config
        enc, dec = model.model.encoder, model.model.decoder
        h, act, t = cfg.decoder_attention_heads, cfg.activation_function, max_output_len
        encode = WhisperEncoder(model, [encoder_layer(layer, cfg.encoder_attention_heads, act, "pre")
                                        for layer in enc.layers])
        rows = dec.embed_positions.weight
        if t > rows.shape[0]:
            raise InputError(f"max_output_len {t} exceeds the model's {rows.shape[0]} decoder positions "
                             f"(config.json max_target_positions); lower the recipe's max_output_len")
        decode = UnmaskedDecoder(
            frozen_embedding(dec.embed_tokens.weight), [decoder_layer(layer, h, act, "pre") for layer in dec.layers],
            LayerNorm(dec.layer_norm), tied_head(model, dec.embed_tokens.weight), h, cfg.d_model // h, t,
            cache_mode, self_bias=causal_table(t), pos_table=rows[:t].detach().clone().float().T.contiguous())
        return encode, decode

    def tokens(self, model: Model) -> SpecialTokens:
        cfg, gen = model.config, model.generation_config
        return SpecialTokens(
            first_id("decoder_start_token_id", gen.decoder_start_token_id, cfg.decoder_start_token_id),
            first_id("eos_token_id", gen.eos_token_id, cfg.eos_token_id),
            first_id("pad_token_id", gen.pad_token_id, cfg.pad_token_id, 0))

    def encode_contract(self, model: Model) -> dict[str, Any]:
        cfg = model.config
        frames = 2 * cfg.max_source_positions
        return {"encode_spec": [TensorSpec("input_features", "float32", (1, cfg.num_mel_bins, frames))],
                "input": {"kind": "log_mel", "n_mels": cfg.num_mel_bins, "frames": frames},
                "cross_len": cfg.max_source_positions, "cross_bias": False}

    def generation(self, model: Model, max_output_len: int) -> dict[str, Any]:
        gen = model.generation_config
        prompt, languages = decoder_prompt(gen, model.config)
        if len(prompt) >= max_output_len:
            raise InputError(f"max_output_len {max_output_len} leaves no room after the {len(prompt) + 1} "
                             f"prompt tokens")
        return {"decoder_prompt": prompt, "language_token_ids": languages,
                "task_prompt": task_prompt(gen, model.config).to_dict(),
                "suppress_tokens": [int(t) for t in (gen.suppress_tokens or [])],
                "begin_suppress_tokens": [int(t) for t in (gen.begin_suppress_tokens or [])]}
