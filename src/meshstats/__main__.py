"""``python -m meshstats`` is the ``meshstats`` command."""

import sys

from .cli import main

sys.exit(main())
