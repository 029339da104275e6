"""Settings: files, merge, strict validation (see loader, schema, spec)."""
