"""The ``dmedian`` command line (also ``python -m pipeline``)."""

from pipeline.cli.main import build_cli, main

__all__ = ["build_cli", "main"]
