"""pixelwatch runtime: scoring, message schemas and the stream worker (never imports torch)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixelwatch")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
