"""sensitivity (work in progress)."""
