"""``python -m konductor``: the ``konductor`` command (see :mod:`konductor.cli`)."""

import sys

from konductor.cli import main

sys.exit(main())
