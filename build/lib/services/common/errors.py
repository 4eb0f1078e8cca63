"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""


class KizunaError(Exception):
    """An expected failure with a message that says what failed and how to fix it."""


class ConfigError(KizunaError):
    """A setting is missing or malformed."""


class UnreachableError(KizunaError):
    """Kafka or ClickHouse cannot be reached."""


class StackError(KizunaError):
    """The local stack could not start or stop."""
