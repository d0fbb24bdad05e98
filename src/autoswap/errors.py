"""User-facing errors: the CLI prints `autoswap: <message>` on one line and exits non-zero,
with no traceback. Raise these for anything the user can fix (bad params, bad files)."""


class UserError(Exception):
    """A problem with the user's input. The message names the file or key and what to do."""

    exit_code = 1


class ConfigError(UserError):
    """params.yaml is missing, malformed, or has an unknown key or a bad value."""

    exit_code = 2
