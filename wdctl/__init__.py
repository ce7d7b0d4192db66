"""wdctl: shrink MarianMT translation models by Weight Distillation, export, quantize, benchmark."""

__version__ = "0.1.0"
