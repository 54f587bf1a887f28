"""``python -m privmed.cli ...``: the ``privmed`` console script without the installed entry point."""
import sys

from privmed.cli import main

sys.exit(main())
