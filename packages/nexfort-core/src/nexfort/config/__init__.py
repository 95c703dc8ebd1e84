"""Public configuration API: ``resolve_config`` and the list of mode flags."""

from nexfort.core.config import available_flags, parse_mode, resolve_config, to_yaml
from nexfort.core.errors import NexfortConfigError

__all__ = ["available_flags", "parse_mode", "resolve_config", "to_yaml", "NexfortConfigError"]
