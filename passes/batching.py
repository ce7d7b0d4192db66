"""Decoding rules every translator shares (PyTorch, onnxruntime, CTranslate2), torch-free so
that a decoding process need not import torch."""

from __future__ import annotations

from typing import Sequence


# The output length limit, floor(A_NUM * n / A_DEN) + B for a source of n tokens (EOS included):
# one definition for PyTorch (`passes.translate`), the in-graph translator (whose decoder step
# computes it in integer ops and records it in the file's metadata), CTranslate2 and the bench.
LIMIT_A_NUM = 3
LIMIT_A_DEN = 2
LIMIT_B = 10


def output_limit(source_tokens: int, max_length: int | None = None) -> int:
    """Longest output worth decoding for a source of this length (fairseq's max_len_a/b idea):
    keeps an untrained or looping model from always running to the model's maximum. Counted as
    transformers' `max_length` counts (decoder start token and EOS included). Every sentence
    gets its own, from its own source (never the longest of its batch), so a sentence's output
    does not depend on its batch. `max_length`, when given, caps it (the caller's limit)."""
    limit = LIMIT_A_NUM * int(source_tokens) // LIMIT_A_DEN + LIMIT_B
    return limit if max_length is None else min(max_length, limit)


def output_limit_rule() -> str:
    """The rule as the translator file's metadata records it."""
    return f"{LIMIT_A_NUM}*n/{LIMIT_A_DEN}+{LIMIT_B}"


def length_sorted_batches(sentences: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of the non-empty sentences in length-sorted batches (less padding); empty
    sentences are left out (their translation is the empty string)."""
    order = sorted((i for i, s in enumerate(sentences) if s.strip()), key=lambda i: len(sentences[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
