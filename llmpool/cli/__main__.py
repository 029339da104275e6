"""`python -m llmpool.cli`: the console script without an installed entry point."""

import sys

from llmpool.cli.commands import main

sys.exit(main())
