"""``python -m empas ...``: the command line (what ``torchrun -m empas`` runs)."""

import sys

from .cli import main

sys.exit(main())
