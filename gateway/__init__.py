"""Responses API gateway over any Chat Completions upstream."""

__version__ = "0.1.0"
