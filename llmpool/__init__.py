"""llm-pool core: configuration, registry, scheduler and backend adapters.

Nothing in this package imports Flask; the HTTP layer lives in `blueprints/`.
"""

__version__ = "0.1.0"
