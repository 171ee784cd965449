"""Decoding methods. Importing this package registers every method in `methods.base.METHODS`."""

from methods import ar, hf, lookahead, pld, speculative  # noqa: F401
