"""``python -m fastka``: the ``fastka`` command."""
import sys

from .cli import main

sys.exit(main())
