"""The package's version, read from its installed metadata."""

from __future__ import annotations

from importlib import metadata

#: What ``version()`` says when the package has no metadata (run from a
#: source tree that was never installed): a valid version that sorts first.
UNKNOWN = "0+unknown"


def version() -> str:
    """The installed version of tinyllm, as pip knows it."""
    try:
        return metadata.version("tinyllm")
    except metadata.PackageNotFoundError:
        return UNKNOWN
