"""``python -m fastka.cli``: the ``fastka`` command."""
import sys

from . import main

sys.exit(main())
