"""CLI command modules. Each module adds its commands to `wdctl.app.app` when imported."""

import importlib

COMMAND_MODULES = ["data", "teacher", "compress", "export", "shortlist", "bench", "translate", "demo"]


def register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"wdctl.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"wdctl.commands.{name}":
                raise
