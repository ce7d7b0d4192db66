import time

from transformers import AutoTokenizer, MarianMTModel

from wdctl.passes.translate import translate_torch


def test_tiny_teacher_trains_fast_and_loads_with_standard_classes(tmp_path, tiny_corpus, cli):
    out = tmp_path / "teacher"
    started = time.perf_counter()
    code, stdout, stderr = cli("teacher", "train", "--data", tiny_corpus, "--out", out, "--preset", "tiny",
                               "--max-steps", 150, "--vocab-size", 400, "--threads", 1)
    assert code == 0, stderr
    assert time.perf_counter() - started < 120
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = MarianMTModel.from_pretrained(out)
    vocab = tokenizer.get_vocab()
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == len(vocab) - 1
    assert model.config.pad_token_id == model.config.decoder_start_token_id == len(vocab) - 1
    assert model.generation_config.bad_words_ids == [[len(vocab) - 1]]
    assert float(model.get_input_embeddings().weight[len(vocab) - 1].abs().sum()) == 0.0
    hyps = translate_torch(model, tokenizer, ["In the beginning God created the heaven.", ""], beams=2)
    assert hyps[0].strip() and hyps[1] == ""
    assert "test_bleu_beam1" in stdout
    assert (tmp_path / "teacher.run" / "metrics.json").is_file()


def test_teacher_training_lowers_the_loss(tiny_teacher_dir):
    import json

    run = tiny_teacher_dir.with_name(tiny_teacher_dir.name + ".run")
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0] - 1.0
