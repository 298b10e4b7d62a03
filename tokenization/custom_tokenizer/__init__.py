"""The project's own byte-level BPE, in plain Python: read bpe.py to learn the algorithm."""

from tokenization.custom_tokenizer.bpe import BytePairEncoding, pretokenize

__all__ = ["BytePairEncoding", "pretokenize"]
