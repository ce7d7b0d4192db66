"""Decoding rules every translator shares (PyTorch, onnxruntime, CTranslate2), torch-free so
that a decoding process need not import torch."""

from __future__ import annotations

from typing import Sequence


def output_limit(source_tokens: int) -> int:
    """Longest output worth decoding for a source of this length (fairseq's max_len_a/b idea):
    keeps an untrained or looping model from always running to the model's maximum."""
    return int(1.5 * source_tokens) + 10


def length_sorted_batches(sentences: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of the non-empty sentences in length-sorted batches (less padding); empty
    sentences are left out (their translation is the empty string)."""
    order = sorted((i for i, s in enumerate(sentences) if s.strip()), key=lambda i: len(sentences[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
