"""gradscope's version, in a module of its own (the run marker of :mod:`gradscope.events` writes it)."""

__version__ = "0.1.0"
