"""edgeseq: split encoder-decoder transformers into on-device encode/decode programs."""
__version__ = "0.1.0"
