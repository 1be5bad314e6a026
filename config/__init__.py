"""Settings: one default file plus environment overrides (see ``default.toml``)."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
