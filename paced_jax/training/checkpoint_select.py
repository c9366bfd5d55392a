"""Choosing a kept training checkpoint by step, for the commands that export or evaluate one."""

from __future__ import annotations

from paced_jax import workspace
from paced_jax.config import ExperimentConfig
from paced_jax.model.loaded import LoadedModel
from paced_jax.training import trainer


def restore_kept(cfg: ExperimentConfig, student: LoadedModel, step: int | None):
  """(step, params) of a kept checkpoint (None: the latest); a missing step names the kept ones."""
  with trainer.checkpoint_manager(cfg.workdir) as mngr:
    kept = list(mngr.all_steps())
  if not kept or (step is not None and step not in kept):
    raise FileNotFoundError(f"{workspace.checkpoints_dir(cfg.workdir)}: no checkpoint at step {step}; "
                            f"kept steps: {', '.join(map(str, sorted(kept))) or 'none'}")
  return trainer.restore_params(cfg, student, step)
