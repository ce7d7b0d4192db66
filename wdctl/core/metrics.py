"""Translation quality with sacrebleu, always reported with its signature."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import sacrebleu


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str


def bleu(hypotheses: list[str], references: list[str]) -> Score:
    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return Score("BLEU", round(result.score, 2), str(metric.get_signature()))


def chrf(hypotheses: list[str], references: list[str]) -> Score:
    metric = sacrebleu.metrics.CHRF()
    result = metric.corpus_score(hypotheses, [references])
    return Score("chrF", round(result.score, 2), str(metric.get_signature()))


def score_bleu(translate: Callable[[list[str], int], list[str]], pairs: list[tuple[str, str]], beams: list[int],
               prefix: str) -> dict:
    """`PREFIX_bleu_beamB` and `PREFIX_seconds_beamB` for each beam size B, and the signature."""
    metrics = {}
    for b in beams:
        started = time.perf_counter()
        score = bleu(translate([s for s, _ in pairs], b), [t for _, t in pairs])
        metrics[f"{prefix}_bleu_beam{b}"] = score.score
        metrics[f"{prefix}_seconds_beam{b}"] = round(time.perf_counter() - started, 2)
        metrics["bleu_signature"] = score.signature
    return metrics
