"""Shared test helpers: real files and real processes the tests build themselves (importable as `helpers`)."""
