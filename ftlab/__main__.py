"""``python -m ftlab``: the ``ftlab`` command (as ``python -m ftlab.cli``)."""
import sys

from ftlab.cli import main

sys.exit(main())
