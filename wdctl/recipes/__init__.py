"""Recipes: each one a whole job read top to bottom (`compress`, `teacher`), composed of the
passes (`wdctl.passes`) and the export (`wdctl.export`). The CLI commands call them."""
