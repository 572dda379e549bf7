"""Errors a user can fix, raised at every layer; the entrypoints print them as one `error:` line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-fixable configuration problem; its message is one line naming the key."""
