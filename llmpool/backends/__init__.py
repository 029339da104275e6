"""Runtime adapters, one module per backend, selected through `registry`."""
