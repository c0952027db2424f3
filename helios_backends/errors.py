"""The user-facing errors: a bad checkpoint, a bad request, and a generation stopped before its end."""


class CheckpointError(ValueError):
    """A checkpoint folder, file or tensor is missing, unknown or misshaped."""


class RequestError(ValueError):
    """A generation request has a field outside its accepted range; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GenerationCancelled(RuntimeError):
    """`Generation.cancel()` was called; raised by the next `step()`, which then does no work."""


class GenerationTimeout(GenerationCancelled):
    """The request's `timeout_s` ran out; a cancellation by the clock, so one except clause catches both."""
