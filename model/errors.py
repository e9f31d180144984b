"""maskloop's errors: one base, :class:`MaskloopError`, and a named subclass per kind of failure.

Every subclass says what went wrong and what to do in its message, so the CLI can print it as one line
(``maskloop <command>: <message>``) and exit with :attr:`MaskloopError.exit_code`. The base lives in ``model/``,
the lowest layer, so that every layer can subclass it without importing upward.
"""

from __future__ import annotations


class MaskloopError(Exception):
    """Base of every error maskloop raises on purpose. ``exit_code`` is the CLI's exit status for it."""

    exit_code = 2


class BadMediaError(MaskloopError, ValueError):
    """An image or video that cannot be used. ``name`` is the object (S3 key, path); ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class ModelNotAvailableError(MaskloopError, RuntimeError):
    """A checkpoint that is not on this machine and cannot be downloaded; the message says what to fetch and where."""


class ModelDependencyError(ModelNotAvailableError):
    """A checkpoint whose family needs a Python package that is not installed; the message names the package."""


class ModelCapabilityError(MaskloopError, ValueError):
    """A model asked for something its family cannot do (e.g. a point prompt on SAM 3's concept model, the concept
    strategy on SAM 2); the message names the model, what it supports, and what to use instead."""
