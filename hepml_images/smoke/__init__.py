"""Smoke tests of built images."""
