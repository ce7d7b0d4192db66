"""examples/plateau_table.py on a made-up run directory: the curve counts steps over both phases,
and a finished run trained on to a larger cap counts as under way until its metrics are rewritten."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_table():
    spec = importlib.util.spec_from_file_location("plateau_table", REPO / "examples" / "plateau_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_a_run_trained_on_is_under_way_until_its_metrics_are_rewritten(tmp_path):
    table = load_table()
    run = tmp_path / "tiny-wd-s1.run"
    write_log(run / "phase1" / "log.jsonl", [{"step": 300, "loss": 5.0, "seconds": 600.0}, {"step": 300, "dev_bleu": 20.0}])
    write_log(run / "phase2" / "log.jsonl", [{"step": 250, "loss": 3.0, "seconds": 300.0}, {"step": 250, "dev_bleu": 30.0},
                                             {"step": 500, "loss": 2.9, "seconds": 600.0}, {"step": 500, "dev_bleu": 31.0}])
    metrics = {"student_parameters": 1000, "test_bleu_beam1": 29.0, "test_bleu_beam4": 30.5,
               "phases": {"phase1": {"steps": 300}, "phase2": {"steps": 500}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    teacher = {"dev_bleu": 32.0}

    row = table.run_row(tmp_path, "tiny-wd-s1", teacher)
    assert [p["step"] for p in row["curve"]] == [300, 550, 800]  # phase 2 counted after phase 1's 300
    assert row["curve"][-1]["train_minutes"] == 20.0
    assert row["finished"] and row["test_bleu_beam4"] == 30.5
    assert row["steps_to_teacher_minus_2"] == 550 and row["steps_to_teacher_minus_1"] == 800

    write_log(run / "phase2" / "log.jsonl", [{"step": 750, "loss": 2.8, "seconds": 900.0}, {"step": 750, "dev_bleu": 31.5}])
    row = table.run_row(tmp_path, "tiny-wd-s1", teacher)
    assert not row["finished"] and row["test_bleu_beam4"] is None and row["steps"] == 1050
