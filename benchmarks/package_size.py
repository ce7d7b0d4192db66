"""Package size: the int8 translator package against CTranslate2 int8 of the same model.

For each model it builds what an int8 export ships for CPU decoding (for a model with a
tokenizer, `wdctl export --quantize int8`'s own package, via `build_package`; optimum's
encoder/decoder files are not part of it) and converts the same model with
`ct2-transformers-converter --quantization int8` (with the package's vmap.txt when it has one),
then reports the bytes of the model file (translator.onnx / model.bin), of each directory, and
their ratio.

Models: any MarianMT directories given (e.g. the bundled teacher `examples/teacher`, the demo's
trained student `runs/demo/wd-small`: what `wdctl export` writes for them), the
demo's student shape (`--demo-student`: the paper's SMALL of the bundled teacher, random
weights: size does not depend on training), and `--opus-shape`: an opus-mt-en-de-shaped model
(d 512, 6+6 layers, FFN 2048, shared 58,101-piece vocabulary, tied embeddings; random weights,
no download). A random model has no tokenizer: its package is counted without tokenizer files
and CTranslate2 gets a placeholder vocabulary of the same size (its vocabulary file is counted).

    python benchmarks/package_size.py examples/teacher runs/demo/wd-small --demo-student --opus-shape \\
        --out examples/results/package-size
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6


def _dir_bytes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}


def placeholder_pieces(vocab: int) -> list[str]:
    """The pieces a random model without a tokenizer gets here: `</s>` 0, `<unk>` 1, `<pad>` last
    (Marian's layout), `t<id>` for the others."""
    return ["</s>" if i == 0 else "<unk>" if i == 1 else "<pad>" if i == vocab - 1 else f"t{i}" for i in range(vocab)]


def _ct2(model_dir: Path, out: Path, placeholder_vocab: int | None, vmap: Path | None = None) -> None:
    """CTranslate2 int8 of `model_dir` into `out` (with `vmap` as its vocabulary mapping); a model
    without a tokenizer (`placeholder_vocab`: its vocabulary size) gets `placeholder_pieces`."""
    if placeholder_vocab is None:
        venv_tool = Path(sys.executable).parent / "ct2-transformers-converter"
        tool = str(venv_tool) if venv_tool.is_file() else "ct2-transformers-converter"
        subprocess.run([tool, "--model", str(model_dir), "--quantization", "int8", "--output_dir", str(out),
                        "--force", *(["--vocab_mapping", str(vmap)] if vmap else [])], check=True, capture_output=True)
        return
    # a random model has no tokenizer: the converter reads only its vocabulary and special tokens
    import ctranslate2.converters.transformers as ct

    class Placeholder:
        eos_token, unk_token, bos_token, pad_token = "</s>", "<unk>", "<s>", "<pad>"

        def get_vocab(self):
            return {piece: i for i, piece in enumerate(placeholder_pieces(placeholder_vocab))}

    original = ct.TransformersConverter.load_tokenizer
    ct.TransformersConverter.load_tokenizer = lambda self, *a, **k: Placeholder()
    try:
        ct.TransformersConverter(str(model_dir)).convert(str(out), vmap=None if vmap is None else str(vmap),
                                                         quantization="int8", force=True)
    finally:
        ct.TransformersConverter.load_tokenizer = original


def _random_package(model, model_dir: Path, package: Path, work: Path) -> int:
    """A random model's int8 package as export builds it, less what needs a tokenizer (the
    validation, the calibration of activation ranges, the shortlist). Returns the fp32
    translator's bytes."""
    from wdctl.export.quantize import copy_package_files
    from wdctl.export.translator import export_translator, quantize_translator

    package.mkdir(parents=True)
    fp32 = work / f"{package.name}.fp32.onnx"
    export_translator(model, fp32)
    quantize_translator(fp32, package / "translator.onnx")
    copy_package_files(model_dir, package)
    for extra in ("model.safetensors", "pytorch_model.bin", "training"):  # the weights are in translator.onnx
        target = package / extra
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return fp32.stat().st_size


def measure(name: str, model_dir: Path, work: Path, has_tokenizer: bool) -> dict:
    """A model with a tokenizer gets exactly what `wdctl export --quantize int8` writes (with its
    shortlist and vmap.txt when the model has a shortlist.json: CTranslate2 then gets the same
    vmap); CTranslate2's side is also counted with the sentencepiece models it needs to
    translate text (its directory holds only a vocabulary list)."""
    from wdctl.export.build import build_package
    from wdctl.passes.marian import load_marian

    from transformers import MarianMTModel

    package, ct2_dir = work / f"{name}.int8", work / f"{name}.ct2"
    started = time.perf_counter()
    model = MarianMTModel.from_pretrained(model_dir) if not has_tokenizer else load_marian(model_dir)[0]
    model.eval()
    if has_tokenizer:
        # lenient: a random-weight model's beams may tie; sizes do not depend on it
        built_package = build_package(model_dir, None, package, mode="int8", optimum=False, lenient=True)
        fp32_bytes = built_package["onnx"]["translator"]["bytes"]
    else:
        fp32_bytes = _random_package(model, model_dir, package, work)
    built = time.perf_counter() - started
    vmap = package / "vmap.txt"
    _ct2(model_dir, ct2_dir, None if has_tokenizer else model.config.vocab_size, vmap if vmap.is_file() else None)
    ours, theirs = _dir_bytes(package), _dir_bytes(ct2_dir)
    spm = sum(p.stat().st_size for p in model_dir.glob("*.spm"))
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    row = {
        "model": name, "source": str(model_dir) if has_tokenizer else "random weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "d_model": model.config.d_model, "layers": [model.config.encoder_layers, model.config.decoder_layers],
        "vocab": model.config.vocab_size, "tokenizer_files": has_tokenizer,
        "pytorch_weights_bytes": weights, "fp32_translator_bytes": fp32_bytes, "shortlist": vmap.is_file(),
        "int8_translator_bytes": ours["translator.onnx"], "int8_package_bytes": sum(ours.values()),
        "int8_package_files": ours,
        "ct2_model_bin_bytes": theirs["model.bin"], "ct2_dir_bytes": sum(theirs.values()), "ct2_files": theirs,
        "seconds_to_build": round(built, 1),
    }
    row["ratio_model_file"] = round(row["int8_translator_bytes"] / row["ct2_model_bin_bytes"], 3)
    row["ratio_dir"] = round(row["int8_package_bytes"] / row["ct2_dir_bytes"], 3)
    row["ct2_with_sentencepiece_bytes"] = row["ct2_dir_bytes"] + spm
    row["ratio_to_translate_text"] = round(row["int8_package_bytes"] / row["ct2_with_sentencepiece_bytes"], 3)
    return row


def _save_random(config, path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import MarianMTModel

    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    model.save_pretrained(path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="MarianMT directories (with tokenizer files)")
    parser.add_argument("--demo-student", action="store_true",
                        help="the demo's student shape: SMALL of examples/teacher, random weights, its tokenizer")
    parser.add_argument("--opus-shape", action="store_true", help="an opus-mt-en-de-shaped model, random weights")
    parser.add_argument("--out", type=Path, help="write package-size.json and package-size.md here")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="package-size-") as tmp:
        work = Path(tmp)
        for model_dir in args.models:
            rows.append(measure(model_dir.name, model_dir, work, has_tokenizer=True))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_files")}), flush=True)
        if args.demo_student:
            from transformers import MarianConfig

            from wdctl.passes.student import resolve_student, student_config

            teacher = Path(__file__).resolve().parent.parent / "examples" / "teacher"
            config = student_config(MarianConfig.from_pretrained(teacher),
                                    resolve_student("small", MarianConfig.from_pretrained(teacher)))
            path = _save_random(config, work / "src-demo-student")
            for f in teacher.iterdir():  # the student keeps the teacher's tokenizer
                if f.is_file() and f.suffix in (".spm", ".json") and f.name not in ("config.json",):
                    shutil.copy2(f, path / f.name)
            rows.append(measure("demo-student-small", path, work, has_tokenizer=True))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_files")}), flush=True)
        if args.opus_shape:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from test_opus_shape import opus_mt_config

            path = _save_random(opus_mt_config(), work / "src-opus-shape")
            rows.append(measure("opus-mt-shape", path, work, has_tokenizer=False))
            print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith("_files")}), flush=True)

    if args.out:
        import ctranslate2
        import onnxruntime

        args.out.mkdir(parents=True, exist_ok=True)
        record = {"command": "python benchmarks/package_size.py " + " ".join(argv or sys.argv[1:]),
                  "machine": f"{platform.machine()}, {platform.system()}; sizes do not depend on the machine",
                  "versions": {"onnxruntime": onnxruntime.__version__, "ctranslate2": ctranslate2.__version__},
                  "rows": rows}
        (args.out / "package-size.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        lines = [
            "# int8 package size against CTranslate2 int8",
            "",
            f"`{record['command']}` (onnxruntime {onnxruntime.__version__}, ctranslate2 {ctranslate2.__version__}).",
            "The int8 package is what `wdctl export --quantize int8` writes for a model with a tokenizer",
            "(translator.onnx, config, tokenizer files, and vmap.txt where the model has a shortlist.json);",
            "for a random model, translator.onnx + config. CTranslate2's directory is model.bin + config.json +",
            "its vocabulary list (+ the same vmap.txt, given as --vocab_mapping, where the package has one); to",
            "translate text it also needs the model's sentencepiece files, counted in the last two columns.",
            "MB = 10^6 bytes.",
            "",
            "| model | params | PyTorch fp32 | translator.onnx int8 | CT2 model.bin | ratio | package dir | CT2 dir | ratio "
            "| CT2 dir + .spm | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            note = "" if r["tokenizer_files"] else " (no tokenizer files)"
            if r.get("shortlist"):
                note += " (with shortlist)"
            lines.append(f"| {r['model']} (d {r['d_model']}, {r['layers'][0]}+{r['layers'][1]}, vocab {r['vocab']:,}) "
                         f"| {r['parameters'] / 1e6:.1f}M | {r['pytorch_weights_bytes'] / MB:.1f} MB "
                         f"| {r['int8_translator_bytes'] / MB:.1f} MB | {r['ct2_model_bin_bytes'] / MB:.1f} MB "
                         f"| {r['ratio_model_file']:.2f}x | {r['int8_package_bytes'] / MB:.1f} MB{note} "
                         f"| {r['ct2_dir_bytes'] / MB:.1f} MB | {r['ratio_dir']:.2f}x "
                         f"| {r['ct2_with_sentencepiece_bytes'] / MB:.1f} MB | {r['ratio_to_translate_text']:.2f}x |")
        (args.out / "package-size.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
