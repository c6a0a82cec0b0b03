"""The library's one error type for bad arguments."""


class SVFArgumentError(ValueError):
    """An argument of a public function or of the op is invalid; the message names it."""
