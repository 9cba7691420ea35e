"""Spec files: YAML → validated, typed spec objects (the only code that reads spec files)."""
