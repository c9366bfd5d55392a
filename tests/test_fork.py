"""A fork adds a divergence in one small file (tests/fork_divergence.py) and trains the tiny model with it."""

import importlib
import json
import shutil

import pytest

from paced_jax import workspace
from paced_jax.training import losses, trainer
import tiny_workspace
from stage_fixtures import tiny_experiment


@pytest.fixture
def registered():
  import fork_divergence
  importlib.reload(fork_divergence)  # (re)registers "scaled_fkl"
  yield fork_divergence
  losses.DIVERGENCES.pop("scaled_fkl", None)


def _first_step_loss(prepared, tmp_path, name, **overrides):
  workdir = str(tmp_path / name)
  shutil.copytree(prepared[0], workdir)
  cfg = tiny_experiment(workdir, track="distill", train__steps=2, train__checkpoint_every=2, **overrides)
  trainer.train(cfg, prepared[1], prepared[1], progress=False)
  records = [json.loads(line) for line in open(workspace.train_metrics_file(workdir))]
  assert [r["step"] for r in records] == [1, 2] and all(r["skipped"] == 0 for r in records)
  return records[0]


def test_a_registered_divergence_trains_with_its_hyperparameter(registered, tmp_path_factory, tmp_path):
  prepared = tiny_workspace.prepared(tmp_path_factory)
  base = _first_step_loss(prepared, tmp_path, "fkl", train__loss="fkl")
  fork = _first_step_loss(prepared, tmp_path, "fork", train__loss="scaled_fkl",
                          train__loss_params={"scaled_fkl": {"scale": 3.0}})
  assert fork["divergence"] == "scaled_fkl"
  # Same data and initial weights: the fork's loss is 3x the built-in forward KL's, and it moved the model.
  assert fork["loss"] == pytest.approx(3.0 * base["loss"], rel=1e-5)
  assert fork["grad_norm"] == pytest.approx(3.0 * base["grad_norm"], rel=1e-4)


def test_a_mistyped_hyperparameter_is_refused(registered, tmp_path):
  with pytest.raises(ValueError, match="loss_params.scaled_fkl.scal: scaled_fkl has no such hyperparameter"):
    losses.hyperparameters("scaled_fkl", {"scaled_fkl": {"scal": 2.0}})
