"""Batched translation with a PyTorch MarianMTModel (dev BLEU, distilled data, `wdctl translate`)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from wdctl.core.metrics import bleu
from wdctl.passes.batching import length_sorted_batches, output_limit


def count_too_long(tokenizer, sentences: list[str], limit: int) -> int:
    """How many (non-empty) inputs exceed `limit` source tokens and will be cut to it."""
    texts = [s for s in sentences if s.strip()]
    return sum(len(ids) > limit for ids in tokenizer(texts)["input_ids"]) if texts else 0


@torch.inference_mode()
def translate_torch(
    model,
    tokenizer,
    sentences: list[str],
    beams: int = 4,
    batch_size: int = 32,
    max_length: int = 256,
    length_penalty: float = 1.0,
    progress: bool = False,
) -> list[str]:
    """Translate in length-sorted batches (less padding) and return hypotheses in input order.

    Empty input lines give empty output lines, so alignment with the input is kept.
    """
    model.eval()
    out = [""] * len(sentences)
    for idx in tqdm(length_sorted_batches(sentences, batch_size), desc="translate", unit="batch",
                    disable=not progress):
        enc = tokenizer([sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                        max_length=min(max_length, tokenizer.model_max_length)).to(model.device)
        limit = min(max_length, output_limit(enc["input_ids"].shape[1]))
        extra = {"early_stopping": True, "length_penalty": length_penalty} if beams > 1 else {}
        generated = model.generate(**enc, num_beams=beams, max_length=limit, **extra)
        for i, text in zip(idx, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            out[i] = text
    return out


def dev_bleu_evaluator(tokenizer, dev_pairs, beams: int = 1, batch_size: int = 64):
    """`evaluate(model) -> {"dev_bleu": ...}` over `dev_pairs`: the training loop's dev check."""
    sources, references = [s for s, _ in dev_pairs], [t for _, t in dev_pairs]

    def evaluate(model) -> dict:
        hyps = translate_torch(model, tokenizer, sources, beams=beams, batch_size=batch_size)
        return {"dev_bleu": bleu(hyps, references).score}

    return evaluate
