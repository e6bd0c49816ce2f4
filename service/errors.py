"""One root exception, so the CLI can turn every user error into a one-line message."""


class PixelwatchError(Exception):
    """Root of every error pixelwatch reports to a user."""


class InputError(PixelwatchError):
    """An image file or value is malformed; the message names the file and line or row."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source = source
        self.where = where
        self.problem = problem
        super().__init__(f"{source}:{where}: {problem}")


class ModelError(PixelwatchError):
    """A model file is missing, unreadable or has incompatible metadata."""
