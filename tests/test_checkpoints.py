"""Checkpoints record their settings, inputs and file checksums: a resumed run with other settings is
refused before it writes, a damaged newest checkpoint falls back to the previous intact one, and the
pipeline redoes the export and the final evaluation when training is extended."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from paced_jax import artifacts, config as config_lib, pipeline, workspace
from paced_jax.training import checkpoints, trainer
import tiny_workspace
from stage_fixtures import tiny_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained for the tiny config's 6 steps (checkpoints at steps 3 and 6)."""
  workdir, student = tiny_workspace.prepared(tmp_path_factory)
  run = str(tmp_path_factory.mktemp("trained") / "w")
  shutil.copytree(workdir, run)
  cfg = tiny_experiment(run)
  trainer.train(cfg, student, student, progress=False)
  return run, student


@pytest.fixture
def run(trained, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained[0], workdir)
  return tiny_experiment(workdir), trained[1]


def _snapshot(workdir):
  out = {}
  for d, _, names in os.walk(workdir):
    for n in names:
      if n != artifacts.LOCK_FILE:
        out[os.path.relpath(os.path.join(d, n), workdir)] = artifacts.sha256_file(os.path.join(d, n))
  return out


def _largest_file(workdir, step):
  files = [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(workspace.checkpoints_dir(workdir), str(step)))
           for n in ns]
  return max(files, key=os.path.getsize)


def _flip_byte(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0xFF]))


def test_manifest_records_settings_inputs_and_every_file(run):
  cfg, _ = run
  m = artifacts.read_manifest(workspace.checkpoints_dir(cfg.workdir), checkpoints.KIND)
  assert sorted(m["steps"], key=int) == ["3", "6"]
  assert m["settings"]["train.lr"] == cfg.train.lr and "workdir" not in m["settings"]
  assert set(m["inputs"]) == {"problems", "pass_rates", "references", "teacher"}
  root = os.path.join(workspace.checkpoints_dir(cfg.workdir), "6")
  on_disk = {os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns}
  assert set(m["steps"]["6"]) == on_disk and any(n.endswith("_METADATA") for n in on_disk)


@pytest.mark.parametrize("dotted,value", [("train.lr", 0.5), ("train.loss", "jsd"), ("weights.alpha", 3.0),
                                          ("train.batch_size", 4), ("train.steps", 4)])
def test_other_settings_are_refused_before_anything_is_written(run, dotted, value):
  cfg, student = run
  group, field = dotted.split(".")
  other = dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **{field: value})})
  before = _snapshot(cfg.workdir)
  old = artifacts.read_manifest(workspace.checkpoints_dir(cfg.workdir), checkpoints.KIND)["settings"][dotted]
  message = f"field '{dotted}' is {old!r} but this run has {value!r}"
  with pytest.raises(checkpoints.CheckpointError, match=message.replace("(", r"\(").replace(".", r"\.")):
    trainer.train(other, student, student, progress=False)
  with pytest.raises(checkpoints.CheckpointError, match="trained with other settings"):
    pipeline.run(other)
  assert _snapshot(cfg.workdir) == before


def test_settings_that_do_not_train_are_accepted_and_steps_may_grow(run):
  cfg, _ = run
  same = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, greedy_pass1=True),
                             train=dataclasses.replace(cfg.train, checkpoint_every=5))
  assert trainer.check_resume(same) == []
  longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=9))
  with pytest.warns(UserWarning, match="two-stage boundary"):
    assert trainer.check_resume(longer) == ["train.steps"]


def test_changed_input_is_refused(run):
  cfg, _ = run
  path = os.path.join(workspace.pass_rates_dir(cfg.workdir, 0), artifacts.MANIFEST)
  with open(path, "a") as f:
    f.write(" ")
  with pytest.raises(checkpoints.CheckpointError, match="input 'pass_rates' has changed"):
    trainer.check_resume(cfg)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(run):
  cfg, student = run
  _, want = trainer.restore_params(cfg, student, step=3)
  bad = _largest_file(cfg.workdir, 6)
  _flip_byte(bad)
  with pytest.warns(UserWarning, match=f"checkpoint {bad} is damaged"):
    step, got = trainer.restore_params(cfg, student)
  assert step == 3
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(checkpoints.CheckpointError, match="checkpoint 6 is missing or damaged"):
    trainer.restore_params(cfg, student, step=6)


def test_deleted_metadata_falls_back_and_no_intact_step_is_refused(run):
  cfg, student = run
  root = workspace.checkpoints_dir(cfg.workdir)
  (metadata,) = [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(root, "6")) for n in ns if n == "_METADATA"]
  os.unlink(metadata)
  with pytest.warns(UserWarning, match="_METADATA is damaged"):
    assert trainer.restore_params(cfg, student)[0] == 3
  _flip_byte(_largest_file(cfg.workdir, 3))
  with pytest.warns(UserWarning), pytest.raises(checkpoints.CheckpointError, match="every checkpoint is damaged"):
    trainer.restore_params(cfg, student)


def test_foreign_checkpoints_without_a_manifest_are_refused(run):
  cfg, student = run
  os.unlink(os.path.join(workspace.checkpoints_dir(cfg.workdir), artifacts.MANIFEST))
  with pytest.raises(checkpoints.CheckpointError, match="checkpoints without manifest.json"):
    trainer.restore_params(cfg, student)
  with pytest.raises(checkpoints.CheckpointError, match="checkpoints without manifest.json"):
    trainer.check_resume(cfg)


@pytest.mark.slow
def test_extending_steps_reexports_and_reevaluates_the_new_step(tmp_path_factory, tmp_path):
  workdir, _ = tiny_workspace.prepared(tmp_path_factory)
  run = str(tmp_path / "w")
  shutil.copytree(workdir, run)
  cfg = tiny_experiment(run)
  pipeline.run(cfg)
  source = lambda d: artifacts.read_manifest(os.path.join(run, d), pipeline.EXPORT_KIND)["step"]
  assert source("export") == 6
  longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=9))
  with pytest.warns(UserWarning, match="two-stage boundary"):
    pipeline.run(longer)
  assert source("export") == 9
  final = artifacts.read_manifest(workspace.eval_dir(run, "final"), "eval")
  assert "@step9:" in final["model_fingerprint"]
  assert sorted(os.listdir(workspace.checkpoints_dir(run))) == ["6", "9", artifacts.MANIFEST]


def test_diverging_training_stops_with_a_clear_error(trained, tmp_path):
  workdir, student = trained
  run = str(tmp_path / "w")
  shutil.copytree(workdir, run)
  shutil.rmtree(workspace.checkpoints_dir(run))
  cfg = tiny_experiment(run, train__lr=1e6, train__max_skipped_in_a_row=1)
  with pytest.warns(UserWarning, match="update skipped"), pytest.raises(trainer.Diverged, match="lower train.lr"):
    trainer.train(cfg, student, student, progress=False)


def test_seq_len_shorter_than_the_longest_prompt_is_refused_before_writing(trained, tmp_path):
  workdir, student = trained
  run = str(tmp_path / "w")
  shutil.copytree(workdir, run)
  shutil.rmtree(workspace.checkpoints_dir(run))
  shutil.rmtree(workspace.metrics_dir(run))
  cfg = tiny_experiment(run, train__seq_len=8)
  with pytest.raises(config_lib.ConfigError, match="config.train.seq_len: 8 does not fit the longest student prompt"):
    trainer.train(cfg, student, student, progress=False)
  assert not os.path.exists(workspace.metrics_dir(run)) and not os.path.exists(workspace.checkpoints_dir(run))


def test_training_resumes_from_the_fallback_and_replaces_the_damaged_step(run):
  cfg, student = run
  _flip_byte(_largest_file(cfg.workdir, 6))
  with pytest.warns(UserWarning, match="is damaged"):
    trainer.train(cfg, student, student, progress=False)
  m = artifacts.read_manifest(workspace.checkpoints_dir(cfg.workdir), checkpoints.KIND)
  assert checkpoints.damage(cfg.workdir, m, 6) is None and trainer.restore_params(cfg, student)[0] == 6


def test_a_cpu_save_bounded_to_its_largest_array_round_trips(tmp_path, monkeypatch):
  """In-flight save bytes are bounded on CPU (issue 17); the bound is never below the largest array
  (orbax refuses an array larger than its byte limiter), and what is saved reads back unchanged."""
  monkeypatch.setattr(checkpoints, "CPU_SAVE_FLOOR_BYTES", 2**20)
  rng = np.random.default_rng(0)
  state = {"big": jax.numpy.asarray(rng.normal(size=(1024, 768)), jax.numpy.float32),   # 3 MiB > the floor
           "small": jax.numpy.asarray(rng.normal(size=(64, 8)), jax.numpy.float32),
           "step": jax.numpy.int32(7)}
  workdir = str(tmp_path / "w")
  with checkpoints.manager(workdir, state) as mngr:
    mngr.save(7, args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()
  with checkpoints.manager(workdir) as mngr:
    restored = mngr.restore(7, args=ocp.args.StandardRestore(jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)))
  for key in state:
    np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(state[key]))


def test_restored_parameters_equal_the_saved_state_read_whole(run):
  """restore_params reads the parameters alone (not the optimizer moments); they equal the `params` of
  the whole train state read back by orbax, at the latest and at an earlier kept step."""
  cfg, student = run
  for step in (None, 3):
    got_step, params = trainer.restore_params(cfg, student, step)
    with checkpoints.manager(cfg.workdir) as mngr:
      whole = mngr.restore(got_step)  # orbax's own full read, no target
    assert got_step == (6 if step is None else 3) and set(whole) > {"params", "opt_state"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, whole["params"])
