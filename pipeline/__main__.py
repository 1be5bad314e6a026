"""``python -m pipeline``: the ``dmedian`` command line."""

from pipeline.cli import main

main()
