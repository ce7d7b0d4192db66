"""Register wdctl's model classes with transformers' Auto classes, without importing either.

`import wdctl` runs `install()`. If transformers is already imported, the classes of
`wdctl.passes.narrow_marian` are registered at once; otherwise a one-shot import hook
registers them right after `transformers` itself is imported. Either way
`AutoModelForSeq2SeqLM.from_pretrained(DIR)` loads a `NarrowMarianMTModel` directory after
`import wdctl` (no `trust_remote_code`), while `import wdctl` alone stays free of torch and
transformers (the ONNX and CTranslate2 benchmark workers measure their own memory).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_TARGET = "transformers"


def register_now() -> None:
    """Import wdctl's model module: its last line registers the classes (a module already imported,
    or being imported right now because it imported transformers, has done or will do so)."""
    try:
        importlib.import_module("wdctl.passes.narrow_marian")
    except Exception as exc:  # noqa: BLE001 - never break `import transformers`
        warnings.warn(f"wdctl: could not register its model classes with transformers ({exc})", stacklevel=2)


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Finds `transformers` with the other finders and registers once its module has run."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        uninstall()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register_now()

        spec.loader.exec_module = exec_and_register
        return spec


_HOOK = _AfterTransformers()


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install() -> None:
    if _TARGET in sys.modules:
        register_now()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
