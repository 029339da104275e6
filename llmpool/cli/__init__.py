"""The `llm-pool` console script (setup.cfg's entry point is `llmpool.cli:main`).

`commands.py` parses the command line and runs a command; `client.py` finds and talks to a
running pool; `render.py` turns its answers into tables. No Flask here either: the CLI
talks to the pool over HTTP like any other client.
"""

from llmpool.cli.commands import main

__all__ = ["main"]
