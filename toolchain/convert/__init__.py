"""Converters from other formats into a `save_pretrained` checkpoint directory edgeseq exports."""

from .whisper_ct2 import convert_ct2_whisper, is_ct2_model_dir

__all__ = ["convert_ct2_whisper", "is_ct2_model_dir"]
