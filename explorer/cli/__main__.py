"""``python -m explorer.cli``: the same as ``pruning-explorer``."""

import sys

from explorer.cli.main import main

sys.exit(main())
