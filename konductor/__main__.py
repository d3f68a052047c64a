"""``python -m konductor``: the ``konductor`` command (see :mod:`konductor.cli`)."""

from konductor.cli import console

console()
