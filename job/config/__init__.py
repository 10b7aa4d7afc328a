"""The config schema and the run plan it expands to."""
