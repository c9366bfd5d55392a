"""The --config flag every stage command shares, and turning it into an ExperimentConfig."""

from __future__ import annotations

from absl import logging
from ml_collections import config_flags

from paced_jax import config as config_lib

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/demo.py:quick; override fields with --config.a.b=v.",
    lock_config=True)


def experiment() -> config_lib.ExperimentConfig:
  logging.set_verbosity(logging.WARNING)  # keep library chatter (orbax, XLA) off the progress bars
  if CONFIG.value is None:
    raise SystemExit("--config is required, e.g. --config=configs/tiny.py")
  try:
    return config_lib.experiment(CONFIG.value)
  except config_lib.ConfigError as e:
    raise SystemExit(f"config error: {e}") from None
