"""Shared fixtures: tiny real models trained on a slice of the bundled corpus, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIBLE = REPO / "examples" / "data" / "bible"

torch.set_num_threads(1)


def write_tsv(path: Path, pairs) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bible_pairs():
    from wdctl.core.corpus import read_parallel

    return {split: read_parallel(BIBLE, split) for split in ("train", "dev", "test")}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, bible_pairs) -> Path:
    """A corpus directory in the bundled layout: 600 train, 40 dev, 40 test pairs (short verses)."""
    root = tmp_path_factory.mktemp("corpus")
    short = [p for p in bible_pairs["train"] if len(p[0]) < 90]
    write_tsv(root / "train.en-es.tsv", short[:600])
    write_tsv(root / "dev.en-es.tsv", [p for p in bible_pairs["dev"] if len(p[0]) < 90][:40])
    write_tsv(root / "test.en-es.tsv", [p for p in bible_pairs["test"] if len(p[0]) < 90][:40])
    return root


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_corpus) -> Path:
    """A tiny MarianMT teacher (2+2 layers, d 64) trained for a few seconds on `tiny_corpus`."""
    from wdctl.config import TEACHER_SCHEDULES, train_config
    from wdctl.recipes.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher") / "model"
    cfg = train_config(TEACHER_SCHEDULES["tiny"], {"max_steps": 120, "threads": 1})
    train_teacher(str(tiny_corpus), out, "tiny", cfg, vocab_size=400, eval_sentences=8, final_beams=1)
    return out


@pytest.fixture
def cli(capsys):
    """Run `wdctl ARGS...` in-process; returns (exit_code, stdout, stderr)."""
    from wdctl.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
