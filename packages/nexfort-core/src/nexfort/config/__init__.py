"""Public configuration API: ``resolve_config`` and the list of mode flags."""

from nexfort.core.config import available_flags, parse_mode, parse_spec, resolve_config, to_yaml
from nexfort.core.errors import NexfortConfigError
from nexfort.core.flags import ModeFlag

__all__ = ["available_flags", "parse_mode", "parse_spec", "resolve_config", "to_yaml", "ModeFlag",
           "NexfortConfigError"]
