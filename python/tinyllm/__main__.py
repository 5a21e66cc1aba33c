"""``python -m tinyllm``: the same as the ``tinyllm`` command."""

import sys

from tinyllm.cli import main

sys.exit(main())
