"""`python -m batchpredict`: the same CLI."""

import sys

from batchpredict.cli import main

sys.exit(main())
