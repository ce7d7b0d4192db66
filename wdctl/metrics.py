"""Translation quality with sacrebleu, always reported with its signature."""

from __future__ import annotations

from dataclasses import dataclass

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
