"""User-facing errors: one paragraph that says what went wrong and what to do."""


class ConformanceError(Exception):
    """An error caused by the user's input (checkpoint, profile, machine), not by a bug.

    The CLI and the pytest plugin print its message as is, without a traceback.
    """
