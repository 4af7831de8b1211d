"""``python -m fastpose.bench``: the same as ``fastpose-bench``."""

import sys

from .cli import main

sys.exit(main())
