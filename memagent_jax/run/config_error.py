"""The one error every config check raises (file keys, command-line overrides, typed settings)."""


class ConfigError(ValueError):
    """A config file or command-line override is wrong; the message names the key."""
