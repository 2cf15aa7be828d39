"""``python -m optkit.bench bench ...``: the bench command without the top-level CLI."""

import sys

from ._cli import main

sys.exit(main())
