"""chatstream: stream LLM answers the moment they are generated, and never lose one."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("chatstream")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
