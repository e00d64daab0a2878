"""``python -m autocompress`` = the ``autocompress`` command."""

import sys

from .cli import main

sys.exit(main())
