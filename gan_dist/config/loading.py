"""Settings from YAML files and dotted `key=value` overrides onto the dataclasses of schema.py,
each value checked against its annotation (one-line errors naming the key); the resolved
config back as a dict or YAML; the list of every key for --help."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from gan_dist.config.schema import CHOICES, WORDS, Config
from gan_dist.config.validation import validate
from gan_dist.errors import UserError


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check/convert one value against the dataclass annotation; one-line error on mismatch."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (typ,) = [t for t in typing.get_args(typ) if t is not type(None)]
        origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {_expected(key, typ)}, got {value!r}")


def _expected(key: str, typ: Any) -> str:
    """What a key takes, in its own words where a type name says too little (a str key of
    choices, or of a number or a word)."""
    if key in WORDS:
        return WORDS[key]
    if key in CHOICES:
        return "one of " + ", ".join(repr(c) for c in CHOICES[key])
    return typ.__name__


def _set(cfg: Config, key: str, value: Any) -> None:
    obj: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise UserError(f"unknown config key '{key}' (valid in {where}: {', '.join(fields)})")
        hints = typing.get_type_hints(type(obj))
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hints[part]):
                if not isinstance(value, dict):
                    raise UserError(f"{key}: expected a mapping of settings, got {value!r}")
                for sub, v in value.items():
                    _set(cfg, f"{key}.{sub}", v)
                return
            setattr(obj, part, _coerce(key, value, hints[part]))
            cfg.__dict__.setdefault("_explicit", set()).add(key)  # is_set: given, not a default
            return
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise UserError(f"unknown config key '{key}' ('{'.'.join(parts[:depth + 1])}' is not a section)")


def load(config_file: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides (values parsed as YAML)."""
    cfg = Config()
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path}: expected a mapping of settings at the top level")
        for key, value in data.items():
            _set(cfg, str(key), value)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides) -> Config:
    """`key=value` items (values parsed as YAML) onto cfg, then validated."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key=value (e.g. train.steps=500)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        _set(cfg, key.strip(), value)
    return validate(cfg)


def is_set(cfg: Config, key: str) -> bool:
    """Was `key` given (a YAML file, an override, a checkpoint's config), or is it the default?
    (A zip's image size and channels fill the ones left unset.)"""
    return key in cfg.__dict__.get("_explicit", ())


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    for key, value in data.items():
        _set(cfg, key, value)
    return validate(cfg)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def settings(obj: Any = None, prefix: str = ""):
    """(key, default, meaning) of every setting, in the schema's order."""
    obj = Config() if obj is None else obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from settings(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f.metadata.get("help", "")


def help_text() -> str:
    """Every key with its default and meaning, for --help."""
    rows = [(key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip(), meaning)
            for key, default, meaning in settings()]
    width = max(len(k) for k, _, _ in rows)
    return "\n".join(f"  {k:{width}}  {d:>20}  {m}" for k, d, m in rows)
