"""`wdctl bench`'s room: `settings` (flags, validated), `packages` (the package cache, built
with `wdctl.export.build`), `run` (the plan of measurements, run and scored), `worker` (one
measurement in its own process) and `report` (report.md, report.json, the plot)."""
