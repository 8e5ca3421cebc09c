"""snapbox: a sandbox runtime built around state serialization."""

__version__ = "0.1.0"
