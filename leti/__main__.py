"""`python -m leti ...`: the same as the `leti` command."""

import sys

from leti.cli import main

sys.exit(main())
