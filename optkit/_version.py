"""The package version: one place, read by the face and by the servers (their v2 metadata)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
