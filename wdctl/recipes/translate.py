"""`wdctl translate`: lines through an exported ONNX package (its in-graph translator,
`translator.onnx`: the whole search in one onnxruntime session; packages without one, and
`--device cuda`, run optimum's `generate()` over the package's encoder and decoder) or a MarianMT
directory (PyTorch); over-long inputs are cut to the model's limit, with a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from wdctl.core.errors import InputError
from wdctl.export.package import OnnxPackage
from wdctl.passes.translate import count_too_long, translate_torch


def _warn_truncation(tokenizer, lines: list[str], max_length: int, warn: Callable[[str], None]) -> None:
    """Over-long inputs are translated cut to the model's limit, with a warning, not rejected."""
    limit = min(max_length, tokenizer.model_max_length)
    too_long = count_too_long(tokenizer, lines, limit)
    if too_long:
        warn(f"wdctl: warning: {too_long} input line(s) longer than {limit} tokens were truncated")


def translate_lines(model_dir: Path, read: Callable[[], list[str]], *, beams: int = 4, batch_size: int = 32, threads: int = 1,
                    max_length: int = 256, length_penalty: float = 1.0, device: str = "cpu",
                    warn: Callable[[str], None] = print, shortlist: bool = True) -> list[str]:
    """One translation per line of `read()` (called once the options are checked); empty lines stay empty.
    `shortlist=False` runs a package's in-graph translator over the full vocabulary."""
    if beams < 1 or batch_size < 1 or threads < 1 or max_length < 2:
        raise InputError("--beams, --batch-size and --threads must be at least 1, --max-length at least 2")
    from wdctl.export.translator import MAX_BEAMS

    if beams > MAX_BEAMS:  # every backend: a huge beam would allocate before failing
        raise InputError(f"--beams {beams} is more than {MAX_BEAMS}")
    if not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: model directory not found")
    if OnnxPackage.is_package(model_dir) and OnnxPackage(model_dir).has_translator() and device == "cpu":
        from wdctl.export.translator import PackageTranslator, settle_kernels_for_search

        settle_kernels_for_search(beams, batch_size)  # before the session
        # the search settings are refused before the input is read or anything is allocated
        translator = PackageTranslator(model_dir, threads=threads, shortlist=shortlist)
        translator.check(beams, max_length)
        lines = read()
        _warn_truncation(translator.tokenizer, lines, max_length, warn)
        return translator.translate(lines, beams=beams, batch_size=batch_size, max_length=max_length,
                                    length_penalty=length_penalty)
    if OnnxPackage.is_package(model_dir):
        # packages from before the in-graph translator, and --device cuda: optimum's generate()
        from wdctl.export.optimum_model import load_optimum

        model = load_optimum(model_dir, threads=threads, device=device)
        tokenizer = OnnxPackage(model_dir).load_tokenizer()
    elif device != "cpu":
        raise InputError("--device cuda applies to ONNX packages only (export the model with `wdctl export`)")
    else:
        import torch

        from wdctl.passes.marian import load_marian

        torch.set_num_threads(threads)
        model, tokenizer = load_marian(model_dir)
    lines = read()
    _warn_truncation(tokenizer, lines, max_length, warn)
    return translate_torch(model, tokenizer, lines, beams=beams, batch_size=batch_size, max_length=max_length,
                           length_penalty=length_penalty)
