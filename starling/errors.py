"""Errors users see. Each says what went wrong, where, and why."""

from __future__ import annotations


class StarlingError(Exception):
    """Base class for errors that the CLI reports as a one-line message with exit code 2."""
