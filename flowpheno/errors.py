"""User-facing errors: one line that names the file, row or ID and the fix."""


class FlowphenoError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits 1."""


class OptionError(FlowphenoError, ValueError):
    """An option value outside its allowed range or set: a usage error (the CLI exits 2)."""

    exit_code = 2
