"""The distribution's version (one place: the package, the plugin manager and ``--version`` read it)."""

__version__ = "0.1.0"
