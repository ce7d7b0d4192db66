#!/usr/bin/env bash
# One GPU, under 8 minutes: the whole GPU path of wdctl on the bundled teacher, one report.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--venv DIR] [--no-install]   # on a machine with one NVIDIA GPU
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]                     # anywhere: flags and plan, nothing on cuda
#
# GPU run, in order, each stage timed (logs in OUT/logs/, the whole run stops within
# GPU_CHECK_BUDGET seconds, default 470; a stage cut short is marked "timed out" in the report):
#   install   its own environment (--venv, default .venv-gpu): pip install -e '.[gpu,ct2]', then the
#             CPU onnxruntime out (see install.sh below); reused while pyproject.toml is unchanged
#   env       torch sees CUDA (and bf16), onnxruntime has CUDAExecutionProvider, CTranslate2 sees a GPU
#   flags     every wdctl command below parses its flags (the same check as the dry run)
#   compress  wdctl compress examples/teacher --method wd --student small --device cuda --precision bf16,
#             GPU_CHECK_STEPS (default 100) steps per phase, 2,000 distilled sentences, test BLEU on 300
#   export    wdctl export OUT/student --device cuda (fp16 package, checked against PyTorch, re-scored on dev)
#   bench     wdctl bench --device cuda --backends torch,ort-optimum,ct2 (PyTorch, onnxruntime
#             CUDAExecutionProvider, CTranslate2 int8_float16) on the first 300 test sentences,
#             teacher vs student, beams 1,4, batch 32 (batch 1 over 300 sentences with PyTorch's
#             generate alone would take most of the budget), 1 timed pass after a warm-up
# OUT (default runs/gpu-check) gets report.md and report.json (stages, wall times, versions,
# nvidia-smi), nvidia-smi.txt, the student, the fp16 package and bench/ (the bench's own
# report.md / report.json). Sizes: GPU_CHECK_STEPS, GPU_CHECK_BEAMS, GPU_CHECK_BATCH_SIZES,
# GPU_CHECK_REPEATS, GPU_CHECK_SENTENCES. pip reads PIP_FIND_LINKS / PIP_NO_INDEX for an offline
# install.
#
# --dry-run (CI, .ci/run): no GPU and no network needed, nothing runs on cuda. It checks that
# every command of the GPU run parses its flags (click parses and converts the exact GPU
# command lines; the command functions are replaced by a recorder, so nothing runs) and that
# the bench backends named are valid on cuda, runs `wdctl compress ... --dry-run` with the same
# flags on --device cpu (the weight-grouping plan and the validated phase configs: TrainConfig
# refuses --device cuda without a GPU), and prints the plan. It uses $WDCTL, else .venv/bin/wdctl.
# Without --dry-run and without a GPU the script stops with a one-line error.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: error: $*" >&2; exit 1; }

dry=0 out="" venv=.venv-gpu install=1
while (($#)); do
  case $1 in
    --dry-run) dry=1 ;;
    --out) (($# >= 2)) || die "--out needs a directory"; out=$2; shift ;;
    --venv) (($# >= 2)) || die "--venv needs a directory"; venv=$2; shift ;;
    --no-install) install=0 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

teacher=examples/teacher data=examples/data/bible
steps=${GPU_CHECK_STEPS:-100} sentences=${GPU_CHECK_SENTENCES:-300}
beams=${GPU_CHECK_BEAMS:-1,4} batch_sizes=${GPU_CHECK_BATCH_SIZES:-32} repeats=${GPU_CHECK_REPEATS:-1}
budget=${GPU_CHECK_BUDGET:-470}
[[ -f $teacher/model.safetensors && -f $data/test.en-es.tsv.gz ]] || die "the bundled teacher or corpus is missing ($teacher, $data)"

if ((dry)); then
  wdctl=${WDCTL:-.venv/bin/wdctl}
  [[ $wdctl == */* ]] || wdctl=$(command -v "$wdctl" || true)
  [[ -x $wdctl ]] || die "no wdctl at '${WDCTL:-.venv/bin/wdctl}' (set WDCTL, or install .venv: pip install -e '.[dev,ct2]')"
  py=$(dirname "$wdctl")/python
  [[ -x $py ]] || die "no python beside $wdctl"
  [[ -n $out ]] || { out=$(mktemp -d); scratch_out=$out; }
else
  if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1 || [[ -z $(nvidia-smi -L 2>/dev/null) ]]; then
    die "no NVIDIA GPU on this machine (nvidia-smi is missing or lists none); use --dry-run to check the plan on CPU"
  fi
  out=${out:-runs/gpu-check}
  py=$venv/bin/python wdctl=$venv/bin/wdctl
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" ${scratch_out:+"$scratch_out"}' EXIT
mkdir -p "$out"
out=$(cd "$out" && pwd)
if ((!dry)); then  # a fresh run: only what this script writes
  rm -rf "$out/student" "$out/student.run" "$out/student-fp16" "$out/bench" "$out/distill-cache" "$out/logs" \
         "$out/report.md" "$out/report.json" "$out/stages.tsv" "$out/versions.json" "$out/nvidia-smi.txt"
fi
mkdir -p "$out/logs"
: > "$out/stages.tsv"

# --- the GPU run's commands (the dry run checks these exact lines) ---
student=$out/student
compress_args=(compress "$teacher" --data "$data" --out "$student" --student small --method wd
  --phase1-steps "$steps" --phase2-steps "$steps" --distill-sentences 2000 --distill-cache "$out/distill-cache"
  --eval-sentences 100 --test-sentences "$sentences" --no-export --device cuda --precision bf16)
export_args=(export "$student" --out "$out/student-fp16" --device cuda --data "$data" --max-sentences 100)
bench_args=(bench --teacher "$teacher" --student "$student" --data "$data" --device cuda
  --backends torch,ort-optimum,ct2 --max-sentences "$sentences" --beams "$beams" --batch-sizes "$batch_sizes"
  --repeats "$repeats" --out "$out/bench")

# --- stages: each timed and logged; the run as a whole stops within $budget seconds ---
t0=$SECONDS failed=0
quote() { local a s=""; for a in "$@"; do s+="$(printf '%q' "$a") "; done; echo "${s% }"; }
stage() {  # stage NAME CAP_SECONDS COMMAND...: run it under what is left of the budget
  local name=$1 cap=$2; shift 2
  local left=$((budget - (SECONDS - t0))) rc status start=$SECONDS
  local limit=$((cap < left ? cap : left))
  echo "== $name: $(quote "$@")"
  if ((limit < 15)); then
    status="skipped: the ${budget} s budget is spent"; rc=1
  else
    set +e
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/logs/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
      0) status=ok ;;
      124|137) status="timed out after ${limit} s" ;;
      *) status="failed (exit $rc)" ;;
    esac
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$(quote "$@")" >> "$out/stages.tsv"
  echo "== $name: $status ($((SECONDS - start)) s)"
  ((rc == 0)) || failed=1
  return "$rc"
}
skip() { printf '%s\t%s\t0\t%s\n' "$1" "skipped: $2" "$(quote "${@:3}")" >> "$out/stages.tsv"; echo "== $1: skipped ($2)"; failed=1; }

cat > "$tmp/install.sh" << 'EOF'
# install.sh VENV: wdctl with the gpu and ct2 extras in its own environment.
# onnxruntime (a base dependency) and onnxruntime-gpu (the gpu extra) unpack into the same
# `onnxruntime` package directory: file by file the later one wins, and uninstalling either
# one deletes files the other needs. So: install everything, uninstall both, then put the GPU
# build back alone (--no-deps; its wheel is in pip's cache by then, nothing is downloaded).
set -euo pipefail
venv=$1
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -x $venv/bin/wdctl && $(cat "$venv/.gpu-check-stamp" 2>/dev/null) == "$want" ]]; then
  echo "reusing $venv (installed from this pyproject.toml)"; exit 0
fi
ort_gpu=$(grep -o '"onnxruntime-gpu==[^"]*"' pyproject.toml | tr -d '"')
[[ -n $ort_gpu ]] || { echo "pyproject.toml has no onnxruntime-gpu pin in its gpu extra"; exit 1; }
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q -e '.[gpu,ct2]'
"$venv/bin/pip" uninstall -q -y onnxruntime onnxruntime-gpu
"$venv/bin/pip" install -q --no-deps "$ort_gpu"
echo "$want" > "$venv/.gpu-check-stamp"
EOF

# The flag check: click parses and converts each command line exactly as `wdctl` would, with
# the command functions replaced by a recorder (nothing runs); then the values the GPU run
# depends on are checked. Arguments: the command lines, separated by ';;'.
cat > "$tmp/flag_check.py" << 'EOF'
import sys

import typer

from wdctl.app import app
from wdctl.commands import register_all

register_all()
root = typer.main.get_command(app)
calls = []


def stub(cmd, path):
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance)
        for name, sub in cmd.commands.items():
            stub(sub, path + [name])
    else:
        cmd.callback = lambda *args, _path=" ".join(path), **kwargs: calls.append((_path, kwargs))


stub(root, [])
lines, line = [], []
for arg in sys.argv[1:] + [";;"]:
    if arg == ";;":
        lines.append(line)
        line = []
    else:
        line.append(arg)
values = {}
for argv in lines:
    try:
        root.main(args=argv, prog_name="wdctl", standalone_mode=False)
    except Exception as exc:  # a usage error: unknown flag, bad value, missing argument
        message = exc.format_message() if hasattr(exc, "format_message") else f"{type(exc).__name__}: {exc}"
        sys.exit(f"flags: `wdctl {' '.join(argv)}`: {message}")
    if len(calls) != 1:
        sys.exit(f"flags: `wdctl {' '.join(argv)}` did not reach a command")
    name, kwargs = calls.pop()
    values[name] = kwargs
    print(f"flags ok: wdctl {name} ({len(argv) - 1} arguments)")

problems = []
if values["compress"]["device"] != "cuda" or values["compress"]["precision"] != "bf16":
    problems.append("compress must run with --device cuda --precision bf16")
if values["export"]["device"] != "cuda":
    problems.append("export must run with --device cuda")
bench = values["bench"]
from wdctl.bench.settings import CPU_ONLY, parse_backends, parse_int_list  # noqa: E402 (after the cheap checks)
from wdctl.core.errors import InputError  # noqa: E402

try:
    backends = parse_backends(bench["backends"], bench["device"])
    parse_int_list(bench["beams"], "--beams", ())
    parse_int_list(bench["batch_sizes"], "--batch-sizes", ())
except InputError as exc:
    sys.exit(f"flags: bench: {exc}")
if bench["device"] != "cuda" or {"torch", "ort-optimum", "ct2"} - set(backends):
    problems.append("bench must measure torch, ort-optimum and ct2 with --device cuda")
if set(backends) & set(CPU_ONLY):
    problems.append(f"bench: {', '.join(set(backends) & set(CPU_ONLY))} run on CPU only")
if problems:
    sys.exit("flags: " + "; ".join(problems))
print(f"plan ok: compress/export/bench on cuda, bench backends {','.join(backends)}, "
      f"{bench['max_sentences']} sentences")
EOF

cat > "$tmp/versions.py" << 'EOF'
import importlib.metadata as md
import json
import platform
import sys

info = {"python": platform.python_version()}
for dist in ("wdctl", "torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnxruntime-gpu", "ctranslate2"):
    try:
        info[dist] = md.version(dist)
    except md.PackageNotFoundError:
        info[dist] = "not installed"
info["onnxruntime distributions"] = sorted({d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()
                                            if d.metadata["Name"].lower().startswith("onnxruntime")})
try:
    import torch
    info["torch cuda"] = torch.version.cuda
    info["torch sees cuda"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16"] = torch.cuda.is_bf16_supported()
except Exception:  # noqa: BLE001
    pass
try:
    import onnxruntime
    info["onnxruntime providers"] = onnxruntime.get_available_providers()
except Exception:  # noqa: BLE001
    pass
try:
    import ctranslate2
    info["ctranslate2 cuda devices"] = ctranslate2.get_cuda_device_count()
except Exception:  # noqa: BLE001
    pass
json.dump(info, open(sys.argv[1], "w"), indent=1)
print("\n".join(f"  {k}: {v}" for k, v in info.items()))
if len(sys.argv) > 2:  # --env: what the GPU run needs
    need = [info.get("torch sees cuda") is True, info.get("bf16") is True,
            "CUDAExecutionProvider" in info.get("onnxruntime providers", []),
            info["onnxruntime distributions"] == ["onnxruntime-gpu"], info.get("ctranslate2 cuda devices", 0) >= 1]
    names = ["torch sees CUDA", "bf16 on the GPU", "onnxruntime CUDAExecutionProvider",
             "onnxruntime-gpu alone (no CPU onnxruntime)", "CTranslate2 sees the GPU"]
    missing = [n for n, ok in zip(names, need) if not ok]
    sys.exit(f"env: missing {', '.join(missing)}" if missing else 0)
EOF

if ((dry)); then
  echo "gpu_check.sh --dry-run: the GPU run would execute, in $budget s at most:"
  echo "  install: $(quote "${PYTHON:-python3.11}" -m venv "$venv"); pip install -e '.[gpu,ct2]'; pip uninstall -y onnxruntime onnxruntime-gpu; pip install --no-deps $(grep -o '"onnxruntime-gpu==[^"]*"' pyproject.toml | tr -d '"')"
  for cmd in compress_args export_args bench_args; do
    declare -n args=$cmd
    echo "  wdctl $(quote "${args[@]}")"
  done
  stage flags 120 "$py" "$tmp/flag_check.py" "${compress_args[@]}" ";;" "${export_args[@]}" ";;" "${bench_args[@]}" || true
  cpu_plan=() prev=""
  for a in "${compress_args[@]}"; do  # --device cuda → cpu: TrainConfig refuses cuda without a GPU
    [[ $prev == --device ]] && a=cpu
    cpu_plan+=("$a") prev=$a
  done
  stage plan 180 "$wdctl" "${cpu_plan[@]}" --dry-run || true
  stage versions 60 "$py" "$tmp/versions.py" "$out/versions.json" || true
else
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
  if ((install)); then stage install 300 bash "$tmp/install.sh" "$venv" || true; fi
  ready=0
  if [[ ! -x $wdctl ]]; then
    skip env "no wdctl in $venv" "$py" "$tmp/versions.py"
  elif stage env 60 "$py" "$tmp/versions.py" "$out/versions.json" --env; then
    ready=1
  fi
  if ((ready)) && stage flags 60 "$py" "$tmp/flag_check.py" "${compress_args[@]}" ";;" "${export_args[@]}" ";;" "${bench_args[@]}"; then
    if stage compress 180 "$wdctl" "${compress_args[@]}"; then
      stage export 120 "$wdctl" "${export_args[@]}" || true
      stage bench 600 "$wdctl" "${bench_args[@]}" || true
    else
      skip export "needs the student" "$wdctl" "${export_args[@]}"
      skip bench "needs the student" "$wdctl" "${bench_args[@]}"
    fi
  else
    why="the environment is not ready"
    ((ready == 0)) || why="the flag check failed"
    skip compress "$why" "$wdctl" "${compress_args[@]}"
    skip export "$why" "$wdctl" "${export_args[@]}"
    skip bench "$why" "$wdctl" "${bench_args[@]}"
  fi
fi

# --- the report: report.md and report.json from stages.tsv, versions.json, nvidia-smi.txt, bench/ ---
report_py=$py
[[ -x $report_py ]] || report_py=$(command -v python3)
cat > "$tmp/report.py" << 'EOF'
import json
import socket
import sys
import time
from pathlib import Path

out, dry, total, budget, commit = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
stages = []
for line in (out / "stages.tsv").read_text(encoding="utf-8").splitlines():
    name, status, seconds, command = line.split("\t")
    stages.append({"stage": name, "status": status, "seconds": int(seconds), "command": command})
versions = json.loads((out / "versions.json").read_text()) if (out / "versions.json").is_file() else {}
smi = (out / "nvidia-smi.txt").read_text(errors="replace").strip() if (out / "nvidia-smi.txt").is_file() else None
bench = out / "bench" / "report.md"
ok = all(s["status"] == "ok" for s in stages)
report = {"mode": "dry run (CPU)" if dry else "gpu", "ok": ok, "commit": commit, "host": socket.gethostname(),
          "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "total_seconds": total,
          "budget_seconds": budget, "stages": stages, "versions": versions, "nvidia_smi": smi,
          "bench_report": "bench/report.json" if (out / "bench" / "report.json").is_file() else None}
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
md = [f"# GPU check ({report['mode']}): {'passed' if ok else 'FAILED'}", "",
      f"`benchmarks/gpu_check.sh{' --dry-run' if dry else ''}` at {commit} on {report['host']}, {report['date_utc']}: "
      f"{total} s in all (budget {budget} s).", "",
      "| stage | status | wall s |", "|---|---|---:|"]
md += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages]
md += ["", "## Commands", "", "```"] + [f"# {s['stage']}\n{s['command']}" for s in stages] + ["```"]
md += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
md += ["", "## nvidia-smi", "", "```", smi or "(dry run: not run)", "```"]
if bench.is_file():
    md += ["", "## wdctl bench (bench/report.md; its links are relative to bench/)", "", bench.read_text(encoding="utf-8")]
failed = [s["stage"] for s in stages if s["status"] != "ok"]
if failed:
    md += ["", f"Logs of the stages that did not pass: {', '.join(f'logs/{n}.log' for n in failed)}."]
(out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
print(f"report: {out / 'report.md'} ({'passed' if ok else 'FAILED: ' + ', '.join(failed)})")
EOF
"$report_py" "$tmp/report.py" "$out" "$dry" "$((SECONDS - t0))" "$budget" "$(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
if ((dry)); then
  sed -n '/^| stage/,/^## Versions/p' "$out/report.md" | sed '$d'
fi
((failed == 0)) || exit 1
echo "gpu_check.sh: $( ((dry)) && echo 'dry run passed' || echo 'GPU check passed') in $((SECONDS - t0)) s"
