"""Shared test utilities: tiny recipes, launching runs, reading their outputs."""
