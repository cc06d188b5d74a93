"""``python -m robust_distill`` = the ``robust-distill`` command."""

import sys

from robust_distill.cli import main

sys.exit(main())
