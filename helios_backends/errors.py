"""The two kinds of user-facing error: a bad checkpoint and a bad request."""


class CheckpointError(ValueError):
    """A checkpoint folder, file or tensor is missing, unknown or misshaped."""


class RequestError(ValueError):
    """A generation request has a field outside its accepted range; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
