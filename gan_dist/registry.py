"""Names -> factories. `model.kind` and `data.name` take a built-in name or an import path
"package.module:factory"; the built-ins are entries in these tables, resolved the same way as
a user's own (no special path for them).

  model factory:    build(cfg, info: DataInfo) -> (generator, critic)
  dataset factory:  build(cfg) -> (dataset, DataInfo)

The contracts themselves (shapes, ranges, attributes) are checked at start-up by
models.check_contract and datasets.check_dataset.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable

from gan_dist.errors import UserError, first_line

MODELS = {"dcgan": "gan_dist.models.dcgan:build", "mlp": "gan_dist.models.mlp:build",
          "r3gan": "gan_dist.models.r3gan:build"}
DATASETS = {"digits": "gan_dist.data.datasets:digits", "fashion_mnist": "gan_dist.data.datasets:fashion_mnist",
            "mnist": "gan_dist.data.datasets:mnist",
            "image_folder": "gan_dist.data.folder:image_folder", "zip": "gan_dist.data.zipdata:zip_images"}
MOVED = {"gan_dist.datasets": "gan_dist.data.datasets"}  # an import path written before gan_dist 0.3
MOVED_FACTORIES = {"gan_dist.datasets:image_folder": "gan_dist.data.folder:image_folder"}


def is_import_path(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    return bool(sep and module and attr)


def check_spec(key: str, spec: str, table: dict[str, str]) -> None:
    """Config-time check: a known name or something shaped like module:factory."""
    if spec not in table and not is_import_path(spec):
        raise UserError(f"{key}: unknown {spec!r} (built-in: {', '.join(table)}; or your own as "
                        "package.module:factory)")


def resolve(key: str, spec: str, table: dict[str, str]) -> Callable:
    check_spec(key, spec, table)
    module_name, _, attr = MOVED_FACTORIES.get(spec, table.get(spec, spec)).partition(":")
    module_name = MOVED.get(module_name, module_name)
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # ModuleNotFoundError, or the user's module failing on import
        raise UserError(f"{key}={spec}: cannot import {module_name} ({first_line(e)})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{key}={spec}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{key}={spec}: {attr} is not callable (expected a factory function)")
    return obj


def model_factory(spec: str) -> Callable:
    return resolve("model.kind", spec, MODELS)


def dataset_factory(spec: str) -> Callable:
    return resolve("data.name", spec, DATASETS)


def name_of(factory: Callable) -> str:
    """The import path that resolves to `factory` itself (what a checkpoint records, so export
    can rebuild the generator), or "" when there is none: a factory defined in a launch script,
    a functools.partial, a callable object, a lambda."""
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str) or module == "__main__" or "<" in name:
        return ""
    obj = sys.modules.get(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    if obj is not factory:  # the path names something else (or nothing)
        return ""
    for table in (MODELS, DATASETS):
        for short, path in table.items():
            if path == f"{module}:{name}":
                return short
    return f"{module}:{name}"
