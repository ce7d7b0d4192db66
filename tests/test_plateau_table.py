"""examples/plateau_table.py on made-up runs: the curve counts steps over both phases, a finished
run trained on to a larger cap counts as under way until its metrics are rewritten, the
issue's goals are judged on the mean of the finished seeds, and a run whose directory is gone
keeps the row the previous table recorded; a run whose student is the mean of its last
checkpoints is scored on its last checkpoint alone as well."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest

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

    row = table.run_row(tmp_path, "tiny-wd-s1", teacher, "unused")
    assert [p["step"] for p in row["curve"]] == [300, 550, 800]  # phase 2 counted after phase 1's 300
    assert row["curve"][-1]["train_minutes"] == 20.0
    assert row["finished"] and row["test_bleu_beam4"] == 30.5
    assert row["steps_to_teacher_minus_2"] == 550 and row["steps_to_teacher_minus_1"] == 800

    write_log(run / "phase2" / "log.jsonl", [{"step": 750, "loss": 2.8, "seconds": 900.0}, {"step": 750, "dev_bleu": 31.5}])
    row = table.run_row(tmp_path, "tiny-wd-s1", teacher, "unused")
    assert not row["finished"] and row["test_bleu_beam4"] is None and row["steps"] == 1050


def test_the_goals_are_judged_on_the_mean_of_the_finished_seeds():
    table = load_table()
    teacher = {"dev_bleu": 38.0, "test_bleu_beam4": 37.0, "onnx": {"sl": {"tok_s_beam4": 100.0}}}

    def row(system, seed, beam4, steps, tok_s, finished=True):
        return {"run": f"tiny-{system}-s{seed}", "system": system, "seed": seed, "finished": finished,
                "test_bleu_beam1": beam4 - 1, "test_bleu_beam4": beam4, "steps_to_teacher_minus_2": steps,
                "best_dev_bleu": beam4 + 1, "onnx": {"sl": {"tok_s_beam4": tok_s}}}

    rows = [row("wd", 1, 35.4, 1000, 450.0), row("wd", 2, 35.8, 1200, 430.0),
            row("prune-kd", 1, 35.0, 2000, 440.0), row("prune-kd", 2, 34.8, 1000, 440.0),
            row("kd", 1, 30.0, None, 440.0), row("kd", 2, 20.0, None, 440.0, finished=False)]
    one_prune = table.system_stats(rows[:3], teacher)
    stats = table.system_stats(rows, teacher)
    assert stats["wd"]["test_bleu_beam4"] == pytest.approx((35.6, 35.4, 35.8))
    assert stats["wd"]["speed_beam4"][0] == pytest.approx(4.4)
    assert table.spread(stats["wd"]["test_bleu_beam4"]) == "35.60 (35.40–35.80)"
    assert table.spread(stats["kd"]["test_bleu_beam4"]) == "30.00"  # the unfinished seed does not count
    goals = "\n".join(table.goal_lines("tiny", stats, teacher))
    assert "wd − teacher, test beam 4: -1.40 (goal ≥ -1.5, at ≥ 3x the teacher's int8 tokens/s: 4.40x): **met**" in goals
    assert "1100 / 1500 = 0.73x (goal ≤ 0.7x): **missed**" in goals
    assert ("wd − prune-kd, test beam 4: +0.70 (goal ≥ +0.5, means over seeds; seeds: 2 / 2, the issue asks 2 / 2): "
            "**met**") in goals
    assert "wd − kd, test beam 4: +5.60 (goal ≥ +0.5, means over seeds; seeds: 2 / 1, the issue asks 2 / 1): **met**" in goals
    assert "seeds: 2 / 1, the issue asks 2 / 2): open until both have their seeds" in "\n".join(
        table.goal_lines("tiny", one_prune, teacher))
    assert "**missed**" in "\n".join(table.goal_lines("small", stats, teacher))  # -1.40 against SMALL's -0.5
    # a wd seed that never reaches teacher − 2 fails the goal, whatever the others' mean
    some = table.system_stats([row("wd", 1, 35.4, 500, 450.0), row("wd", 2, 35.8, None, 430.0),
                               row("prune-kd", 1, 35.0, 2000, 440.0)], teacher)
    assert ("500 / 2000 = 0.25x (goal ≤ 0.7x; wd: 1 of 2 seeds never reached it): **missed**"
            in "\n".join(table.goal_lines("tiny", some, teacher)))
    never = table.system_stats([row("wd", 1, 35.0, None, 450.0)], teacher)
    assert "wd did not reach it (best dev 36.00, teacher − 2 = 36.00): **missed**" in "\n".join(
        table.goal_lines("tiny", never, teacher))


def test_a_run_whose_directory_is_gone_keeps_its_recorded_row(tmp_path):
    table = load_table()
    then = {"sl": {"tok_s_beam4": 100.0}}
    rows = [{"run": "small-wd-s1", "finished": True, "onnx": {"sl": {"tok_s_beam4": 250.0}}},
            {"run": "small-kd-s1", "finished": False},  # cut off while training: its curve so far
            {"run": "small-prune-kd-s1", "finished": True, "onnx": {"sl": {"tok_s_beam4": 240.0}}}]
    (tmp_path / "plateau.json").write_text(json.dumps({"teacher": {"onnx": then}, "rows": rows, "cpu": {"isa": "avx2"}}))

    recorded = table.recorded_rows(tmp_path / "plateau.json", live={"small-prune-kd-s1"})
    assert [r["run"] for r in recorded] == ["small-wd-s1", "small-kd-s1"] and recorded[0]["recorded"]
    assert not recorded[1]["finished"] and "teacher_onnx" not in recorded[1]
    assert recorded[0]["cpu"] == {"isa": "avx2"}  # the machine it was timed on
    now = {"onnx": {"sl": {"tok_s_beam4": 125.0}}}  # the teacher timed again on another day
    assert table.speed(recorded[0], now, "sl", 4) == pytest.approx(2.5)  # against the timing of its own day
    (tmp_path / "plateau.json").write_text(json.dumps({"teacher": now, "rows": recorded, "cpu": {"isa": "avx512"}}))
    again = table.recorded_rows(tmp_path / "plateau.json", live=set())
    assert table.speed(again[0], now, "sl", 4) == pytest.approx(2.5)  # kept through a second rebuild
    assert again[0]["cpu"] == {"isa": "avx2"}
    # a rebuild without --onnx (no teacher timings of its own) still judges the recorded speed
    stats = table.system_stats([again[0] | {"system": "wd", "test_bleu_beam1": 30.0, "test_bleu_beam4": 31.0,
                                            "steps_to_teacher_minus_2": None, "best_dev_bleu": 32.0}], {})
    assert stats["wd"]["speed_beam4"][0] == pytest.approx(2.5)
    assert table.recorded_rows(tmp_path / "missing.json", live=set()) == []


def test_an_averaged_run_is_compared_on_its_last_checkpoint_and_shows_the_mean_beside_it(
        tmp_path, monkeypatch, tiny_teacher_dir):
    import torch
    from safetensors.torch import save_file

    from wdctl.passes.marian import load_marian

    table = load_table()
    shutil.copytree(tiny_teacher_dir, tmp_path / "small-prune-kd-s2")  # the averaged student compress wrote
    run = tmp_path / "small-prune-kd-s2.run"
    write_log(run / "train" / "log.jsonl", [{"step": 250, "loss": 3.0, "seconds": 300.0}, {"step": 250, "dev_bleu": 30.0}])
    (run / "train" / "done.json").write_text(json.dumps({"steps": 250}))
    model, _ = load_marian(tiny_teacher_dir)
    last = {name: p.detach() + 1.0 for name, p in model.named_parameters() if p.requires_grad}  # the last differs
    for step in (150, 250):
        (run / "train" / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in last.items()},
                  str(run / "train" / "checkpoints" / f"step-{step:08d}" / "trainable.safetensors"))
    (run / "config.json").write_text(json.dumps({"method": "cut-kd", "start": "importance", "phase2": {"average_last": 5}}))
    (run / "metrics.json").write_text(json.dumps({"student_parameters": 1000, "test_bleu_beam1": 31.0, "test_bleu_beam4": 32.0,
                                                  "phases": {"train": {"steps": 250}}}))
    scored = []

    def fake_scores(model, tokenizer, test):
        scored.append(next(model.parameters()).detach().clone())
        return {"test_bleu_beam1": 30.0, "test_bleu_beam4": 31.5}

    monkeypatch.setattr(table, "bleu_on_test", fake_scores)
    monkeypatch.setattr(table, "read_parallel", lambda data, split: [])
    row = table.run_row(tmp_path, "small-prune-kd-s2", {"dev_bleu": 40.0}, "data")
    assert torch.equal(scored[0], next(iter(last.values())))  # scored with the last checkpoint's weights
    assert (row["test_bleu_beam4"], row["averaged_test_bleu_beam4"], row["average_last"]) == (31.5, 32.0, 5)
    cache = json.loads((run / "last-checkpoint-test.json").read_text())
    assert cache["checkpoint"] == "train/checkpoints/step-00000250"
    table.run_row(tmp_path, "small-prune-kd-s2", {"dev_bleu": 40.0}, "data")
    assert len(scored) == 1  # cached
    lines = "\n".join(table.averaging_table([row | {"preset": "small"}]))
    assert "| small-prune-kd-s2 | 5 (150–250) | 30.00 / 31.50 | 31.00 / 32.00 | +1.00 / +0.50 |" in lines


def test_a_rebuild_without_onnx_shows_the_figures_cached_in_fresh_packages(tmp_path):
    table = load_table()
    model = tmp_path / "tiny-wd-s1"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    figures = {"bleu_beam4": 30.0, "tok_s_beam4": 500.0}
    for name in ("tiny-wd-s1.pkg", "tiny-wd-s1.pkg-full"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "translator.onnx").write_bytes(b"graph")
        (tmp_path / name / "plateau-onnx.json").write_text(json.dumps(figures))
    package = tmp_path / "tiny-wd-s1.pkg"
    assert table.onnx_scores(model, package, "unused", measure=False) == {"sl": figures, "full": figures}

    os.utime(model / "model.safetensors", (time.time() + 60, time.time() + 60))  # the model trained on since
    assert table.onnx_scores(model, package, "unused", measure=False) is None  # not exported, not timed


def test_the_steps_to_fixed_dev_levels_are_read_from_the_curve():
    table = load_table()
    points = [{"step": 250, "dev_bleu": 29.9}, {"step": 500, "dev_bleu": 30.0}, {"step": 750, "dev_bleu": 34.9}]
    assert table.level_steps(points) == "500 / 750 / -"  # dev 30 first at 500, 33 at 750, 35 never
