"""Responses API gateway over any Chat Completions upstream."""

__version__ = "0.1.0"  # the one place the version is set: setup.cfg reads it (`attr:`)
