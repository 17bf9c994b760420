"""`python -m runner`: the `sandgate` command."""

import sys

from .cli import main

sys.exit(main())
