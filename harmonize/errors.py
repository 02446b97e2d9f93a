"""Typed errors. The CLI turns each into one line on stderr and a non-zero exit code."""

from __future__ import annotations


class HarmonizeError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class SourceNotFoundError(HarmonizeError):
    """A source path is missing or does not look like the source it was given as."""

    exit_code = 2


class SourceFormatError(HarmonizeError):
    """A source file exists but cannot be read as its format (bad header, bad encoding, …)."""

    exit_code = 3


class BuildError(HarmonizeError):
    """The build cannot be written (output not writable, nothing to build, …)."""

    exit_code = 4


class SchemaDriftError(HarmonizeError):
    """The committed JSON Schema differs from the one the models generate."""

    exit_code = 5
