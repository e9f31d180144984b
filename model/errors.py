"""Errors for bad input: they name the object and the reason, so a batch can record and skip it."""

from __future__ import annotations


class BadMediaError(ValueError):
    """An image or video that cannot be used. ``name`` is the object (S3 key, path); ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class ModelNotAvailableError(RuntimeError):
    """A checkpoint that is not on this machine and cannot be downloaded; the message says what to fetch and where."""
