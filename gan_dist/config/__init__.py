"""The settings: every one a dataclass field with its default and meaning (schema.py), read
from YAML and dotted `key=value` overrides (loading.py), ALL validated in one place
(validation.py), one-line errors naming the key. Imports only errors and registry."""
from gan_dist.config.loading import apply_overrides, dump, from_dict, help_text, is_set, load, settings, to_dict
from gan_dist.config.schema import (
                                    ARCHITECTURE_KEYS,
                                    CHOICES,
                                    METRIC_DIRECTION,
                                    NEEDS_CLASSES,
                                    RANGES,
                                    SEED_MAX,
                                    Config,
                                    setting,
)
from gan_dist.config.validation import augment_operations, check_world, get, validate

__all__ = ["apply_overrides", "dump", "from_dict", "help_text", "is_set", "load", "settings", "to_dict",
           "ARCHITECTURE_KEYS", "CHOICES", "METRIC_DIRECTION", "NEEDS_CLASSES", "RANGES", "SEED_MAX", "Config",
           "setting", "augment_operations", "check_world", "get", "validate"]
