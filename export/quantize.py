"""Quantize an exported package: dynamic int8 for CPUs (by ISA) or fp16 for GPUs.

* int8: optimum's `ORTQuantizer`, one file per call (it refuses multi-file models), dynamic
  quantization (the only kind it supports for seq2seq). Plain `quantize_dynamic` with default
  options leaves the merged decoder's `If` subgraphs unquantized; ORTQuantizer turns on
  `EnableSubgraph` for them. The configuration follows the CPU: `avx512_vnni`, `avx512`,
  `avx2` (with `reduce_range`, which avoids u8*s8 saturation on CPUs without VNNI) or `arm64`.
* fp16: `onnxruntime.transformers.float16` (ships inside onnxruntime, no extra package) with
  fp32 inputs and outputs kept, so the package is a drop-in replacement; its renaming of graph
  outputs breaks the merged decoder's `If` subgraphs, which `_repair_subgraph_outputs` fixes.

Quantized files keep the package's standard names (`OnnxPackage`), so
`ORTModelForSeq2SeqLM.from_pretrained(out)` loads the result with its defaults.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

from wdctl.core.atomic import MARKER, atomic_dir
from wdctl.core.errors import InputError, WdctlError
from wdctl.core.runinfo import cpu_info, versions, write_json
from wdctl.export.package import OnnxPackage
from wdctl.export.session import detect_isa  # noqa: F401 - the ISA int8 targets, re-exported

MODES = ("int8", "fp16")
ISAS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")
REPORT = OnnxPackage.QUANTIZE_REPORT
SKIP_COPY = {MARKER, *OnnxPackage.REPORTS, "ort_config.json"}

# Friendly names for `keep_fp32`; anything else is a glob (or substring) over ONNX node names.
NODE_ALIASES = {
    "lm_head": ["*lm_head*"],
    "output": ["*lm_head*"],
    "output_projection": ["*lm_head*"],
    "embeddings": ["*embed_tokens*", "*shared*", "*embed_positions*"],
}


def quantization_config(isa: str, nodes_to_exclude: list[str]):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if isa == "avx512_vnni":
        return AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True, nodes_to_exclude=nodes_to_exclude)
    if isa == "avx512":
        return AutoQuantizationConfig.avx512(is_static=False, per_channel=True, reduce_range=False,
                                             nodes_to_exclude=nodes_to_exclude)
    if isa == "avx2":
        return AutoQuantizationConfig.avx2(is_static=False, per_channel=True, reduce_range=True,
                                           nodes_to_exclude=nodes_to_exclude)
    if isa == "arm64":
        return AutoQuantizationConfig.arm64(is_static=False, per_channel=True, nodes_to_exclude=nodes_to_exclude)
    raise InputError(f"unknown ISA '{isa}' (choose from {', '.join(ISAS)})")


def _walk_nodes(graph) -> Iterable:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                yield from _walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from _walk_nodes(sub)


def node_names(path: Path) -> set[str]:
    import onnx

    return {node.name for node in _walk_nodes(onnx.load(str(path), load_external_data=False).graph) if node.name}


def match_nodes(names: set[str], patterns: Iterable[str]) -> dict[str, list[str]]:
    """Node names per pattern: aliases first, then globs; a pattern without glob characters
    matches as a substring."""
    found = {}
    for pattern in patterns:
        globs = NODE_ALIASES.get(pattern, [pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"])
        found[pattern] = sorted({n for g in globs for n in names if fnmatch.fnmatchcase(n, g)})
    return found


def copy_package_files(src: Path, dest: Path) -> None:
    """Config, generation config and tokenizer files: everything but ONNX files and reports."""
    for path in src.iterdir():
        if path.is_file() and not OnnxPackage.is_graph_file(path) and path.name not in SKIP_COPY:
            shutil.copy2(path, dest / path.name)


def _quantize_int8(src: Path, dest: Path, isa: str, keep_fp32: tuple[str, ...]) -> dict:
    from optimum.onnxruntime import ORTQuantizer

    matched_any: dict[str, int] = {p: 0 for p in keep_fp32}
    per_file = {}
    for path in OnnxPackage(src).graphs():
        excluded: list[str] = []
        if keep_fp32:
            for pattern, names in match_nodes(node_names(path), keep_fp32).items():
                matched_any[pattern] += len(names)
                excluded.extend(names)
        with tempfile.TemporaryDirectory(dir=dest) as scratch:
            try:
                quantizer = ORTQuantizer.from_pretrained(src, file_name=path.name)
                quantizer.quantize(quantization_config=quantization_config(isa, sorted(set(excluded))),
                                   save_dir=scratch, file_suffix=None)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise WdctlError(f"{path}: int8 quantization failed ({str(exc).splitlines()[0][:200]})") from None
            shutil.move(str(Path(scratch) / path.name), dest / path.name)
        per_file[path.name] = {"kept_fp32_nodes": sorted(set(excluded))}
    unmatched = [p for p, count in matched_any.items() if count == 0]
    if unmatched:
        raise InputError(f"--keep-fp32 {', '.join(unmatched)}: matches no node in {src} "
                         f"(aliases: {', '.join(NODE_ALIASES)}; or a glob over node names)")
    return per_file


def _repair_subgraph_outputs(model) -> None:
    """After `convert_float_to_float16(keep_io_types=True)`: the converter renames the producers
    of graph outputs (adding casts) inside `If` branches too, but not the branch outputs, which
    onnxruntime then rejects. Point the branch outputs at the renamed fp16 values."""
    from onnx import TensorProto

    renamed = {n.output[0]: n.input[0] for n in model.graph.node
               if n.op_type == "Cast" and n.name.startswith("graph_output_cast")}
    for node in model.graph.node:
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            branch = attr.g
            produced = {o for n in branch.node for o in n.output}
            for out in branch.output:
                if out.name not in produced and renamed.get(out.name) in produced:
                    out.name = renamed[out.name]
                    if out.type.tensor_type.elem_type == TensorProto.FLOAT:
                        out.type.tensor_type.elem_type = TensorProto.FLOAT16


def _quantize_fp16(src: Path, dest: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    per_file = {}
    for path in OnnxPackage(src).graphs():
        try:
            model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True, disable_shape_infer=True)
            _repair_subgraph_outputs(model)
            onnx.save(model, str(dest / path.name))
        except Exception as exc:  # noqa: BLE001
            raise WdctlError(f"{path}: fp16 conversion failed ({str(exc).splitlines()[0][:200]})") from None
        per_file[path.name] = {"io_types": "float32 (kept)"}
    return per_file


def _quantize_translator_file(src: Path, dest: Path, mode: str, isa: str | None = None) -> dict:
    """The in-graph translator: int8 (`quantize_translator`; 7-bit weights for an avx2
    target, as optimum's files); fp16 keeps it fp32."""
    if mode != "int8":
        shutil.copy2(src, dest / src.name)
        return {"mode": "fp32 (kept: the translator has no fp16 build)"}
    import onnx

    from wdctl.export.calibration import read_ranges
    from wdctl.export.translator import quantize_translator

    try:
        model = onnx.load(str(src))  # once: its metadata says how int8 will quantize activations
        calibrated = read_ranges(model) is not None
        count = quantize_translator(model, dest / src.name, reduce_range=isa == "avx2")
    except Exception as exc:  # noqa: BLE001
        raise WdctlError(f"{src}: int8 quantization of the translator failed ({str(exc).splitlines()[0][:200]})") from None
    return {"mode": "int8 weights, calibrated activation scales (QuantizeLinear + MatMulIntegerToFloat)" if calibrated
            else "int8 weights, activation scale per call (DynamicQuantizeMatMul; a file from before calibration)",
            "quantized_matmuls": count, "weight_range": 63 if isa == "avx2" else 127}


def quantize_into(package_dir: Path, dest: Path, *, mode: str = "int8", isa: str = "auto",
                  keep_fp32: Iterable[str] = ()) -> dict:
    """Quantize every ONNX file of `package_dir` into the existing directory `dest` (a
    translator-only package: the translator alone, int8 only) and copy the config and tokenizer
    files. Returns the report (also written to `dest/quantize_report.json`)."""
    package_dir, dest = Path(package_dir), Path(dest)
    if mode not in MODES:
        raise InputError(f"unknown quantization mode '{mode}' (choose from {', '.join(MODES)})")
    if isa not in ISAS:
        raise InputError(f"unknown ISA '{isa}' (choose from {', '.join(ISAS)})")
    if not package_dir.is_dir():
        raise InputError(f"{package_dir}: package directory not found")
    if not (package_dir / "config.json").is_file():
        raise InputError(f"{package_dir}: no config.json (export the model first with `wdctl export`)")
    if not OnnxPackage(package_dir).graphs() and mode != "int8":
        raise InputError(f"{package_dir}: a translator-only package has no {mode} build (the translator runs "
                         "in fp32 or int8 on the CPU); export with `wdctl export --optimum` for optimum's files")
    keep_fp32 = tuple(keep_fp32)
    started = time.perf_counter()
    resolved_isa = None
    if mode == "int8":
        resolved_isa = detect_isa() if isa == "auto" else isa
        files = _quantize_int8(package_dir, dest, resolved_isa, keep_fp32)
    else:
        if keep_fp32:
            raise InputError("--keep-fp32 applies to int8 quantization only")
        files = _quantize_fp16(package_dir, dest)
    source_package = OnnxPackage(package_dir)
    if source_package.has_translator():
        files[OnnxPackage.TRANSLATOR] = _quantize_translator_file(source_package.translator, dest, mode, resolved_isa)
    copy_package_files(package_dir, dest)
    before, after = OnnxPackage(package_dir).file_sizes(), OnnxPackage(dest).file_sizes()
    report = {
        "source": str(package_dir),
        "mode": mode,
        "isa": resolved_isa,
        "per_channel": mode == "int8",
        "reduce_range": resolved_isa == "avx2" if mode == "int8" else None,
        "keep_fp32": list(keep_fp32),
        "files": files,
        "sizes": {"before": before, "after": after, "total_before": sum(before.values()),
                  "total_after": sum(after.values()),
                  "ratio": round(sum(after.values()) / max(1, sum(before.values())), 3)},
        "seconds": round(time.perf_counter() - started, 2),
        "cpu": cpu_info(),
        "versions": versions(),
    }
    write_json(dest / REPORT, report)
    (dest / REPORT).chmod(0o644)
    return report


def quantize_package(package_dir: Path | str, out: Path | str, *, mode: str = "int8", isa: str = "auto",
                     keep_fp32: Iterable[str] = (), force: bool = False) -> dict:
    """Quantize the package at `package_dir` into a new package at `out` (all or nothing)."""
    package_dir, out = Path(package_dir), Path(out)
    if mode not in MODES:
        raise InputError(f"unknown quantization mode '{mode}' (choose from {', '.join(MODES)})")
    if package_dir.resolve() == out.resolve():
        raise InputError(f"{out}: output must differ from the package being quantized")
    with atomic_dir(out, force) as tmp:
        return quantize_into(package_dir, tmp, mode=mode, isa=isa, keep_fp32=keep_fp32)
