"""The exporter's user-facing error: one line that says what went wrong and what to do.

Exit codes tell a caller (the operator, a Job's podFailurePolicy) whether trying again can help:
``EXIT_PERMANENT`` for failures that only a change fixes (bad arguments, 401/403/404, an unsupported model),
``EXIT_TRANSIENT`` (EX_TEMPFAIL) for failures of the moment (hub 429/5xx, timeouts, unreachable hub,
interruption by a signal).
"""

EXIT_PERMANENT = 1
EXIT_TRANSIENT = 75


class ExportError(Exception):
    """An export or repository command failed; ``str(error)`` is the one line shown to the user."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
