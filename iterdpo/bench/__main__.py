"""python -m iterdpo.bench: see iterdpo/bench/__init__.py."""

import sys

from .report import main

sys.exit(main())
