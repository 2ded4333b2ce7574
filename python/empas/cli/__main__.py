"""``python -m empas.cli ...`` (the same as ``python -m empas``)."""

import sys

from . import main

sys.exit(main())
