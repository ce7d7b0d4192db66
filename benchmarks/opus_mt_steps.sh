#!/usr/bin/env bash
# Wall time and peak memory of each step of "compress your own model" (README) at opus-mt scale,
# with no download: an opus-mt-en-de-shaped MarianMT teacher with random weights (d 512, 6+6
# layers, 8 heads, FFN 2048, a tied 58,101-piece vocabulary: 74.4 M parameters; the bundled
# teacher's SentencePiece models with a 58,101-entry vocab.json), then
#   wdctl inspect → wdctl compress (SMALL, a few phase-1 and phase-2 steps) → wdctl export (int8)
#   → wdctl translate (8 sentences, beam 4)
# each under /usr/bin/time (wall, CPU seconds, max RSS), on the bundled corpus. The training
# seconds per step and the memory do not depend on the weights; random weights decode to the
# length cap, so distillation, test scoring, export validation and translation take longer than
# with a trained model (upper bounds). `wdctl bench` is left out for that reason. wdctl resets
# the process's memory high-water mark per phase, so compress's max RSS under time is its last
# phase's; each phase's own peak comes from the student's metrics.json. Prints Markdown tables.
#   benchmarks/opus_mt_steps.sh [PHASE1_STEPS=6] [PHASE2_STEPS=6]   (WDCTL=path/to/wdctl, OUT=runs/opus-mt-steps)
set -euo pipefail
p1=${1:-6}; p2=${2:-6}
wdctl=${WDCTL:-wdctl}; out=${OUT:-runs/opus-mt-steps}; python=${PYTHON:-python3}
rm -rf "$out"; mkdir -p "$out/times"
"$python" - "$out/teacher" <<'PY'
import json, shutil, sys
from pathlib import Path
import torch
from transformers import MarianConfig, MarianMTModel, MarianTokenizer

out, bundled = Path(sys.argv[1]), Path("examples/teacher")
VOCAB, PAD = 58101, 58100
config = MarianConfig(
    vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=512, encoder_layers=6, decoder_layers=6,
    encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_attention_heads=8, decoder_attention_heads=8,
    activation_function="swish", scale_embedding=True, static_position_embeddings=True,
    max_position_embeddings=512, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=0, forced_eos_token_id=0,
    dropout=0.1, attention_dropout=0.0, activation_dropout=0.0)
torch.manual_seed(0)
model = MarianMTModel(config).eval()
model.generation_config.bad_words_ids = [[PAD]]
model.generation_config.max_length = 256
model.save_pretrained(out)
vocab = json.loads((bundled / "vocab.json").read_text())
vocab = {k: v for k, v in vocab.items() if k != "<pad>"}
vocab.update({f"<unused{i}>": i for i in range(len(vocab), PAD)})
vocab["<pad>"] = PAD
assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB))
(out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
for name in ("source.spm", "target.spm"):
    shutil.copy(bundled / name, out / name)
MarianTokenizer(str(out / "source.spm"), str(out / "target.spm"), str(out / "vocab.json")).save_pretrained(out)
print(f"{out}: {model.num_parameters():,} parameters")
PY
"$python" -c "import gzip, itertools, sys; [print(l.split('\t')[0]) for l in itertools.islice(gzip.open(sys.argv[1], 'rt'), 8)]" \
  examples/data/bible/test.en-es.tsv.gz > "$out/input.en"
run() {  # run NAME COMMAND...: time one command, keep its output
  local name=$1; shift
  echo "== $name: $*"
  /usr/bin/time -v -o "$out/times/$name.txt" "$@" > "$out/times/$name.log" 2>&1 || { tail -20 "$out/times/$name.log"; exit 1; }
  tail -5 "$out/times/$name.log"
}
run inspect "$wdctl" inspect "$out/teacher" --student small
run compress "$wdctl" compress "$out/teacher" --data examples/data/bible --out "$out/small" --student small \
  --phase1-steps "$p1" --phase2-steps "$p2" --phase1-warmup 2 --phase2-warmup 2 --distill-sentences 32 \
  --distill-cache "$out/distilled" --eval-sentences 0 --test-sentences 16 --no-export --threads 2
run export "$wdctl" export "$out/small" --out "$out/small.int8" --quantize int8 --max-sentences 16
run translate "$wdctl" translate "$out/small.int8" --input "$out/input.en" --output "$out/output.es" --beams 4
"$python" - "$out" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| step | wall | CPU s | max RSS |\n|---|---:|---:|---:|")
for name in ("inspect", "compress", "export", "translate"):
    text = (out / "times" / f"{name}.txt").read_text()
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text).group(1)
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): (\S+)", text).group(1)) for kind in ("User", "System"))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 2**20
    print(f"| {name} | {wall} | {cpu:.0f} | {rss:.1f} GiB |")
metrics = json.loads((out / "small.run" / "metrics.json").read_text())
print("\n| phase | steps | train s | s/step | peak RSS |\n|---|---:|---:|---:|---:|")
for name, phase in metrics["phases"].items():
    print(f"| {name} | {phase['steps']} | {phase['train_seconds']:.1f} | {phase['train_seconds'] / phase['steps']:.1f} "
          f"| {phase['peak_rss_mb'] / 1024:.1f} GiB |")
print("distillation:", metrics.get("distill"))
print("test scoring s (greedy, beam 4):", metrics.get("test_seconds_beam1"), metrics.get("test_seconds_beam4"),
      "on", metrics.get("test_sentences"), "sentences; compress wall s:", metrics.get("total_wall_seconds"))
print("memory check:", metrics.get("memory_check"))
for p in sorted(out.glob("small.int8/*.onnx")):
    print(f"{p.name}: {p.stat().st_size / 1e6:.0f} MB")
PY
