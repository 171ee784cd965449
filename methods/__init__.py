"""Decoding methods, one module each; `methods.base.METHODS` finds them (and entry-point plugins) on first lookup."""
