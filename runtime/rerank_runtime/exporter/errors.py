"""The exporter's user-facing error: one line that says what went wrong and what to do."""


class ExportError(Exception):
    """An export or repository command failed; ``str(error)`` is the one line shown to the user."""
