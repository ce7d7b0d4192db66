"""The teacher that ships with wdctl (`examples/teacher/`) is a working translator.

It loads unchanged with plain transformers (AutoTokenizer + MarianMTModel), and its greedy BLEU
on the first 20 test pairs matches the figure `examples/ship_teacher.py` recorded from the same
weights. Margin 1.0 BLEU: the weights and the decoding are the same, so only float summation
order (another CPU, another BLAS kernel) can differ, which may flip a near-tie token; one
changed token in these ~600 moves corpus BLEU by well under 1.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, MarianMTModel

from wdctl.core.corpus import read_parallel
from wdctl.core.metrics import bleu
from wdctl.passes.marian import load_marian

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "teacher"
MARGIN = 1.0


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads((TEACHER / "training" / "shipped.json").read_text(encoding="utf-8"))


def test_bundled_teacher_is_small_and_complete(shipped):
    files = {p.name for p in TEACHER.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "vocab.json"} <= files
    assert {"config.json", "log.jsonl", "metrics.json", "commands.sh"} <= {p.name for p in (TEACHER / "training").iterdir()}
    assert sum(p.stat().st_size for p in TEACHER.rglob("*") if p.is_file()) <= 40 * 2**20
    assert shipped["weights"] == "fp16" and shipped["test_pairs"] == 1000


def test_bundled_teacher_translates_like_its_record(shipped):
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    model = MarianMTModel.from_pretrained(TEACHER).eval()
    assert model.dtype == torch.float32  # fp16 on disk, fp32 in memory
    check = shipped["check"]
    pairs = read_parallel(ROOT / "examples" / "data" / "bible", "test")[: check["sentences"]]
    batch = tokenizer([s for s, _ in pairs], return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**batch, num_beams=check["beams"], max_length=256)
    hyps = tokenizer.batch_decode(out, skip_special_tokens=True)
    score = bleu(hyps, [t for _, t in pairs]).score
    assert abs(score - check["bleu"]) <= MARGIN, (score, check["bleu"])


def test_wdctl_loads_the_bundled_teacher_in_fp32():
    model, tokenizer = load_marian(TEACHER)
    assert model.dtype == torch.float32 and tokenizer is not None
    assert model.config.encoder_layers == model.config.decoder_layers == 6
