"""Decoding methods. Importing this package registers every method in `methods.base.METHODS`."""

from methods import ar, hf  # noqa: F401
