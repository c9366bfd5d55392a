"""Trainer: the tracks reduce the training KL; SIGTERM + resume reproduces an uninterrupted run."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from paced_jax.evaluation import pass_rate
from paced_jax.teacher import reference
from paced_jax.teacher import stage as teacher_stage
from paced_jax.training import trainer
from paced_jax.training import data as training_data
from paced_jax.training import train_step as ts
from paced_jax.training.packing import pack
from paced_jax.sampling.sampler import Sampler
import tiny_workspace
from stage_fixtures import ROOT, load_student, tiny_experiment


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The session's tiny workspace (pass rates, references, teacher store) and its student."""
  return tiny_workspace.prepared(tmp_path_factory)


def _fixed_batch_loss(cfg, student, params, examples, divergence):
  data = training_data.weighted_problems(cfg)
  scfg = trainer.step_config(cfg, student, divergence, data.K + 1)
  batch, _ = pack(examples, cfg.train.batch_size, cfg.train.seq_len, cfg.teacher_signal.top_k)
  with jax.set_mesh(student.mesh):
    loss, _, _ = jax.jit(lambda p, b: ts.accumulate_gradients(p, b, scfg))(params, jax.tree.map(np.asarray, batch))
  return float(loss)


@pytest.mark.parametrize("track", ["distill", "self_distill"])
def test_track_reduces_training_kl(prepared, tmp_path, track):
  workdir = str(tmp_path / "w")
  student = prepared[1]
  # A different random model as the teacher: a random student barely changes with privileged
  # context, so against itself there would be no KL to reduce.
  cfg = tiny_experiment(workdir, "distill", track=track, train__steps=8, train__checkpoint_every=8)
  teacher = load_student(dataclasses.replace(cfg, student=cfg.teacher), jax.devices()[:1])
  pass_rate.run(cfg, student)
  if track == "distill":
    reference.run(cfg, teacher)
    teacher_stage.run(cfg, teacher)
  data = training_data.weighted_problems(cfg)
  problems = data.batch(0, cfg.train.batch_size, cfg.train.seed)
  initial = nnx.to_pure_dict(student.params)
  if track == "distill":
    examples = training_data.offline_examples(problems, data, *training_data.load_offline(cfg, teacher),
                                              student.tokenizer, cfg)
  else:
    examples, _ = training_data.on_policy_examples(problems, data, Sampler.for_model(student), teacher, teacher.params, 0, cfg)
  divergence = trainer.stage_of(cfg, 0)[1]
  before = _fixed_batch_loss(cfg, student, initial, examples, divergence)
  trainer.train(cfg, student, teacher, progress=False)
  _, trained = trainer.restore_params(cfg, student)
  after = _fixed_batch_loss(cfg, student, trained, examples, divergence)
  assert after < 0.9 * before, (before, after)
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics", "train.jsonl"))]
  assert [r["step"] for r in lines] == list(range(1, 9))
  assert all(np.isfinite(r["loss"]) and r["sequences"] > 0 for r in lines)


def _train_cmd(workdir, steps):
  return [sys.executable, "-m", "paced_jax.tools.train", f"--config={ROOT}/configs/tiny.py",
          f"--config.workdir={workdir}", f"--config.train.steps={steps}", "--config.train.checkpoint_every=2",
          "--config.mesh.data=1"]


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted(prepared, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  runs = {}
  for name in ("clean", "killed"):
    runs[name] = str(tmp_path / name)
    shutil.copytree(prepared[0], runs[name])
  steps = 8
  subprocess.run(_train_cmd(runs["clean"], steps), env=env, check=True, capture_output=True, cwd=ROOT)
  metrics = os.path.join(runs["killed"], "metrics", "train.jsonl")
  proc = subprocess.Popen(_train_cmd(runs["killed"], steps), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.2)
  out = proc.communicate(timeout=300)[0].decode()
  assert proc.returncode == 143, out[-2000:]
  interrupted_at = sum(1 for _ in open(metrics))
  assert 3 <= interrupted_at < steps
  subprocess.run(_train_cmd(runs["killed"], steps), env=env, check=True, capture_output=True, cwd=ROOT)

  read = lambda w: [json.loads(line) for line in open(os.path.join(w, "metrics", "train.jsonl"))]
  clean, resumed = read(runs["clean"]), read(runs["killed"])
  assert [r["step"] for r in resumed] == list(range(1, steps + 1))
  assert [r["loss"] for r in resumed] == [r["loss"] for r in clean]
  student = prepared[1]
  cfg_clean = tiny_experiment(runs["clean"], train__steps=steps)
  cfg_killed = tiny_experiment(runs["killed"], train__steps=steps)
  _, a = trainer.restore_params(cfg_clean, student)
  _, b = trainer.restore_params(cfg_killed, student)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
