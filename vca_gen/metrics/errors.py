"""Errors raised by :mod:`vca_gen.metrics`; the CLI turns every one into a message and exit code 2."""

from __future__ import annotations

from vca_gen.errors import UserError


class MetricsError(UserError):
    """Base class: a problem with the user's input, not a bug."""


class InputFormatError(MetricsError, ValueError):
    """An image set or statistics file has the wrong keys, dtype or shape."""


class ModeMismatchError(MetricsError, ValueError):
    """Features of one mode compared with statistics of the other."""


class InceptionWeightsNotFound(MetricsError, FileNotFoundError):
    """No Inception weights file could be found offline."""


class DatasetNotFound(MetricsError, FileNotFoundError):
    """The files of a named data set (``dataset:animal_mnist``) are not on disk."""
