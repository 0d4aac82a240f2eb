"""``python -m mpcache.cli ...``: the ``mpcache`` command."""
import sys

from mpcache.cli import main

sys.exit(main())
