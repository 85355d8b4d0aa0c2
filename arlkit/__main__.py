"""``python -m arlkit`` (used by ``torchrun ... -m arlkit run RECIPE``)."""

import sys

from arlkit.cli import main

sys.exit(main())
