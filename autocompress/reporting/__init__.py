"""reporting (work in progress)."""
