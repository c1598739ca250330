"""``python -m crnnfw`` is the ``crnnfw`` command (and what torchrun launches)."""

import sys

from .cli import main

sys.exit(main())
