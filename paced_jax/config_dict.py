"""Conversion between the ml_collections ConfigDicts of configs/*.py and config.py's dataclass tree.

Config files and command-line overrides (--config.a.b=v) speak ConfigDict; every stage reads the
frozen dataclasses. `to_dataclass` converts one into the other, refusing an unknown or mistyped
field, or a value outside its choices (config.CHOICES), with the dotted path of the key;
`to_config_dict` goes the other way (the defaults config files start from), `to_json` writes a tree
into run records. Kept apart from config.py so that the settings read as settings; this module
imports only config.py, so every layer may import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections

from paced_jax.config import CHOICES, ConfigError, ExperimentConfig, FieldError


def _convert(tp: Any, value: Any, path: str) -> Any:
  if dataclasses.is_dataclass(tp):
    return to_dataclass(tp, value, path)
  origin = typing.get_origin(tp)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{path}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    return tuple(value)
  if origin in (typing.Union, types.UnionType):
    return value
  if tp is dict or origin is dict:
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    if not isinstance(value, dict):
      raise ConfigError(f"{path}: expected a group of fields, got {value!r}")
    return value
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
    raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
  return value


def to_dataclass(cls: type, value: Any, path: str = "config") -> Any:
  """Convert a ConfigDict / dict / dataclass into `cls`, checking names, types and choices."""
  if isinstance(value, cls):
    return value
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if dataclasses.is_dataclass(value):
    value = dataclasses.asdict(value)
  if not isinstance(value, dict):
    raise ConfigError(f"{path}: expected a group of fields, got {value!r}")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(value) - names)
  if unknown:
    raise ConfigError(f"{path}.{unknown[0]}: unknown field; {cls.__name__} has {', '.join(sorted(names))}")
  kwargs = {}
  for name, v in value.items():
    sub = f"{path}.{name}"
    kwargs[name] = _convert(hints[name], v, sub)
    choices = CHOICES.get(sub.removeprefix("config."))
    if choices and kwargs[name] not in choices:
      raise ConfigError(f"{sub}: {kwargs[name]!r} is not one of {', '.join(choices)}")
  try:
    return cls(**kwargs)
  except FieldError as e:
    raise ConfigError(f"{path}.{e.field}: {e.detail}") from None
  except ValueError as e:  # a group-level check (choices, combinations)
    raise ConfigError(f"{path}: {e}") from None


def to_config_dict(cfg: Any) -> ml_collections.ConfigDict:
  """The defaults of a dataclass tree as a ConfigDict, for config files to start from."""
  def plain(x):
    if dataclasses.is_dataclass(x):
      return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, tuple):
      return tuple(plain(v) for v in x)  # ml_collections parses command-line overrides of tuples only
    return x
  return ml_collections.ConfigDict(plain(cfg))


def experiment(config_dict: ml_collections.ConfigDict) -> ExperimentConfig:
  return to_dataclass(ExperimentConfig, config_dict)


def to_json(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)
