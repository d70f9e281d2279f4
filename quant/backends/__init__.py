"""Runtimes. Each backend module imports its runtime lazily."""
