"""``python -m gradscope`` runs the command line."""

import sys

from gradscope.cli import main

sys.exit(main())
