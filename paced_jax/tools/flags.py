"""The --config flag every stage command shares, and turning it into an ExperimentConfig."""

from __future__ import annotations

import os

from absl import logging
from ml_collections import config_flags

from paced_jax import config as config_lib

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/demo.py:quick; override fields with --config.a.b=v.",
    lock_config=True)


def enable_compilation_cache() -> None:
  """Reuse XLA executables across runs: a resumed or repeated stage skips minutes of compiling."""
  import jax  # deferred: flag parsing must not initialise jax
  directory = os.environ.get("PACED_JAX_XLA_CACHE") or os.path.join(
      os.environ.get("PACED_JAX_CACHE") or os.path.expanduser("~/.cache/paced_jax"), "xla")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def experiment(distributed: bool = True) -> config_lib.ExperimentConfig:
  """The --config experiment; joins a multi-process run (mesh.distributed) unless `distributed` is
  False (tools that only compile, e.g. for a TPU topology, run as one process)."""
  logging.set_verbosity(logging.WARNING)  # keep library chatter (orbax, XLA) off the progress bars
  enable_compilation_cache()
  if CONFIG.value is None:
    raise SystemExit("--config is required, e.g. --config=configs/tiny.py")
  try:
    cfg = config_lib.experiment(CONFIG.value)
  except config_lib.ConfigError as e:
    raise SystemExit(f"config error: {e}") from None
  # Before the stage touches any device: a stage that builds its own mesh still joins the run.
  if distributed:
    from paced_jax import mesh as mesh_lib
    mesh_lib.initialize_distributed(cfg.mesh)
  return cfg
