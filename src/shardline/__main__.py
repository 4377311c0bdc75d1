"""``python -m shardline``: the same command as the ``shardline`` console script."""

import sys

from shardline._cli import main

sys.exit(main())
