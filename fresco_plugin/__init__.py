"""fresco_plugin: Fresco dynamic-resolution sampling for diffusion transformers.

Core modules depend on torch only; ``fresco_plugin.integrations`` holds one adapter per library and imports that
library only when an adapter is used.
"""

from .api import apply_fresco, fresco_config_of, last_fresco_run, remove_fresco
from .config import PRESETS, FrescoConfig
from .registry import (
    FrescoRunner,
    adapters,
    register_adapter,
    register_score,
    register_strategy,
    scores,
    strategies,
)

__all__ = [
    "FrescoConfig", "PRESETS", "apply_fresco", "remove_fresco", "fresco_config_of", "last_fresco_run",
    "register_adapter", "register_strategy", "register_score", "adapters", "strategies", "scores", "FrescoRunner",
]
__version__ = "0.1.0"
