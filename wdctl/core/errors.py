"""One error style for the whole tool: a one-line message naming the file and the problem.

Raise `InputError` for anything the user can fix (bad files, bad flags: exit 2) and
`WdctlError` for runtime failures (exit 1). The CLI prints `wdctl: error: <message>` and
exits with the code; a traceback appears only with `--debug`.
"""


class WdctlError(Exception):
    """A runtime failure with a message meant for the user."""

    exit_code = 1


class InputError(WdctlError):
    """Bad input or usage: missing or malformed files, impossible shapes, bad options."""

    exit_code = 2
