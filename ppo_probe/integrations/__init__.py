"""Optional integrations with tools users already run (each imports its tool lazily)."""
