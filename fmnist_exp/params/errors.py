"""The one error a parameter, a study file or an earlier run's record raises when it is refused."""


class ConfigError(ValueError):
    """A parameter is out of range or malformed; the message names it and the allowed values."""
