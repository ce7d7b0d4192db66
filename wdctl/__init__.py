"""wdctl: shrink MarianMT translation models by Weight Distillation, export, quantize, benchmark."""

__version__ = "0.1.0"

# wdctl's own model classes (NarrowMarianMTModel, the paper's TINY student) load with
# transformers' Auto classes after `import wdctl`; this stays light (see the module).
from wdctl.passes import autoregister as _autoregister  # noqa: E402

_autoregister.install()
