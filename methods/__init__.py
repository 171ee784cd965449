"""Decoding methods. Importing this package registers every method in `methods.base.METHODS`."""

from methods import ar, hf, llm2slm, lookahead, pld, speculative  # noqa: F401
