"""The --config flag every stage command shares, its parsing, and how every command reports user mistakes.

`run(main)` replaces `absl.app.run(main)`: a mistyped override or config path, a stray positional
argument, or a user error raised by a stage (USER_ERRORS) is printed as one line and exits 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Callable

from absl import app, flags as absl_flags, logging
from ml_collections import config_flags

from paced_jax import artifacts, host_memory
from paced_jax import config as config_lib, config_dict
from paced_jax.evaluation import benchmarks, retain_sets
from paced_jax.model import config as model_config, hf_checkpoint, tokenization
from paced_jax.problems import records

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/demo.py:quick; override fields with --config.a.b=v.",
    lock_config=True)

# Mistakes in settings or inputs, not bugs: their messages say what to fix.
USER_ERRORS = (config_lib.ConfigError, artifacts.ArtifactError, records.ProblemFileError, benchmarks.BenchmarkError,
               retain_sets.RetainFileError, model_config.ModelConfigError, hf_checkpoint.CheckpointError,
               tokenization.TokenizerError, app.UsageError,
               FileNotFoundError)  # stages raise it for a missing input (a model directory, an earlier stage)
EXIT_USER_ERROR = 2


def fail(message: str) -> None:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _suggest(word: str, options) -> str:
  close = difflib.get_close_matches(word, list(options), n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def _check_config_path(argv: list[str]) -> None:
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      if not os.path.isfile(path):
        directory = os.path.dirname(path) or "."
        options = os.listdir(directory) if os.path.isdir(directory) else []
        fail(f"--config: no such file {path}{_suggest(os.path.basename(path), options)}")


def _check_overrides(argv: list[str], root) -> None:
  """Name the first `--config.a.b=v` whose path is not a field of the loaded config, with a suggestion."""
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    node, seen = root, []
    for key in dotted.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        where = "config" + "".join("." + k for k in seen)
        fail(f"--config.{dotted}: {where} has no field {key!r}{_suggest(key, keys)}")
      node, seen = node[key], seen + [key]


def _parse(argv: list[str]) -> list[str]:
  _check_config_path(argv)
  try:
    return absl_flags.FLAGS(argv)
  except absl_flags.Error as e:
    fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections: an override it cannot apply
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if spec:
      _check_overrides(argv, _load_config_file(spec))
    fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _load_config_file(spec: str):
  """The config file's get_config(variant) result, loaded again to name the override that failed."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_paced_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def run(main: Callable[[list[str]], None], positional: bool = False) -> None:
  """absl's app.run with one-line user errors (exit 2); `positional`: main takes subcommands."""
  host_memory.limit_arenas()  # before jax starts its threads
  def guarded(argv):
    if len(argv) > 1 and not positional:
      fail(f"unexpected argument(s) {' '.join(argv[1:])} (settings are flags: --config.a.b=value)")
    try:
      main(argv)
    except USER_ERRORS as e:
      fail(str(e))
  app.run(guarded, flags_parser=_parse)


def enable_compilation_cache() -> None:
  """Reuse XLA executables across runs: a resumed or repeated stage skips minutes of compiling."""
  import jax  # deferred: flag parsing must not initialise jax
  directory = os.environ.get("PACED_JAX_XLA_CACHE") or os.path.join(
      os.environ.get("PACED_JAX_CACHE") or os.path.expanduser("~/.cache/paced_jax"), "xla")
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def resolved_config() -> config_lib.ExperimentConfig:
  """The --config file with its overrides, validated; nothing started, nothing locked."""
  if CONFIG.value is None:
    raise config_lib.ConfigError("--config is required, e.g. --config=configs/tiny.py")
  return config_dict.experiment(CONFIG.value)


def experiment() -> config_lib.ExperimentConfig:
  """The run's config, validated; the workdir is locked for this process (process 0 of a pod)."""
  logging.set_verbosity(logging.WARNING)  # keep library chatter (orbax, XLA) off the progress bars
  enable_compilation_cache()
  cfg = resolved_config()
  # Before the stage touches any device: a stage that builds its own mesh still joins the run.
  from paced_jax import mesh as mesh_lib
  mesh_lib.initialize_distributed(cfg.mesh)
  import jax
  if jax.process_index() == 0:  # pod workers share the workdir; one lock holder stands for the run
    artifacts.lock_workdir(cfg.workdir)
  return cfg
