"""Console entry point: registers the command modules and turns errors into one line."""

from __future__ import annotations

import os
import sys

from wdctl.app import app
from wdctl.commands import register_all
from wdctl.core.errors import WdctlError

register_all()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors become `wdctl: error: ...` on stderr with exit 2 (input) or 1."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        app(args=argv, prog_name="wdctl", obj={"argv": argv})  # `--nproc` relaunches the same argv
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except WdctlError as exc:
        if os.environ.get("WDCTL_DEBUG"):
            raise
        print(f"wdctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wdctl: interrupted", file=sys.stderr)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
