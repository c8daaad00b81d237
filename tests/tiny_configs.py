"""Tiny random transformers configs of every family and variant the tests cover (fast to build,
every feature of the family switched on)."""

from __future__ import annotations

from typing import Any


def tiny_config(model_type: str, variant: str, **overrides: Any) -> Any:
    """A tiny config of `variant` for the family that reads `model_type` (e.g. "marian", "marian")."""
    from toolchain import arch

    family = arch.get(model_type).family
    return _FAMILIES[family](variant, **overrides)


def _t5(variant: str = "v1.0", **overrides: Any) -> Any:
    from transformers import MT5Config, T5Config

    base = {"vocab_size": 96, "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 2,
            "num_decoder_layers": 2, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
            "dropout_rate": 0.0, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
    kinds = {
        "v1.0": (T5Config, {"feed_forward_proj": "relu", "tie_word_embeddings": True}),
        "v1.1": (T5Config, {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),
        "mt5": (MT5Config, {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),
    }
    if variant not in kinds:
        raise ValueError(f"unknown T5 variant {variant!r}; choose from {', '.join(kinds)}")
    cls, extra = kinds[variant]
    return cls(**{**base, **extra, **overrides})


def _bart(variant: str = "bart", **overrides: Any) -> Any:
    """"bart" (learned positions, gelu, layernorm_embedding), "mbart" (pre-norm, final norms,
    scaled embeddings) and "marian" (sinusoidal positions, swish, scaled embeddings)."""
    from transformers import BartConfig, MarianConfig, MBartConfig

    base = {"vocab_size": 45, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
            "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
            "max_position_embeddings": 64, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
            "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None, "decoder_start_token_id": 0,
            "forced_eos_token_id": None, "tie_word_embeddings": True}
    kinds = {
        "bart": (BartConfig, {"activation_function": "gelu", "scale_embedding": False, "forced_bos_token_id": None}),
        "marian": (MarianConfig, {"activation_function": "swish", "scale_embedding": True}),
        "mbart": (MBartConfig, {"activation_function": "gelu", "scale_embedding": True}),
    }
    if variant not in kinds:
        raise ValueError(f"unknown BART variant {variant!r}; choose from {', '.join(kinds)}")
    cls, extra = kinds[variant]
    cfg = {**base, **extra, **overrides}
    if variant == "marian":
        cfg.setdefault("decoder_vocab_size", cfg["vocab_size"])
    return cls(**cfg)


def _whisper(variant: str = "whisper", **overrides: Any) -> Any:
    """8 mel bins, 100 frames (1 s at 16 kHz, hop 160) -> 50 encoder positions."""
    from transformers import WhisperConfig

    if variant != "whisper":
        raise ValueError(f"unknown Whisper variant {variant!r}; choose from whisper")
    base = {"vocab_size": 64, "num_mel_bins": 8, "d_model": 32, "encoder_layers": 1, "decoder_layers": 2,
            "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
            "max_source_positions": 50, "max_target_positions": 32, "dropout": 0.0, "attention_dropout": 0.0,
            "activation_dropout": 0.0, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0,
            "decoder_start_token_id": 1, "suppress_tokens": [], "begin_suppress_tokens": [0]}
    return WhisperConfig(**{**base, **overrides})


def _t5gemma(variant: str = "t5gemma", **overrides: Any) -> Any:
    """2+2 layers (one sliding-window, one full), GQA 4 query / 2 KV heads, a 4-token window and
    soft-capping on, so every feature is exercised. `module` overrides both stacks' configs."""
    from transformers import T5GemmaConfig

    if variant != "t5gemma":
        raise ValueError(f"unknown T5Gemma variant {variant!r}; choose from t5gemma")
    vocab = overrides.pop("vocab_size", 64)
    module = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "query_pre_attn_scalar": 8,
              "sliding_window": 4, "max_position_embeddings": 128, "pad_token_id": 0, "eos_token_id": 1,
              "bos_token_id": 0, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
              "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    module.update(overrides.pop("module", {}))
    return T5GemmaConfig(encoder=dict(module), decoder=dict(module), vocab_size=vocab, tie_word_embeddings=True,
                         dropout_rate=0.0, attention_dropout=0.0, **overrides)


_FAMILIES = {"t5": _t5, "bart": _bart, "whisper": _whisper, "t5gemma": _t5gemma}
