"""``python -m fmnist_exp``: see cli.py."""

import sys

from .cli import main

sys.exit(main())
