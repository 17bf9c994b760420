"""`python -m runner`: the `sandgate` command."""

import sys

from ._cli import main

sys.exit(main())
