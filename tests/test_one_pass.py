"""train.one_pass / train.pool: a one-pass run never draws a problem twice, draws only kept problems
of its pool, and takes as many steps as those give full batches; a midpoint recompute reweights
only the problems not drawn yet. Checked by brute force against hand-written pass rates."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from paced_jax import artifacts, workspace
from paced_jax.config import ExperimentConfig, ProblemsConfig, TrainConfig, WeightConfig
from paced_jax.evaluation import pass_rate
from paced_jax.problems import prepare as prepare_lib
from paced_jax.training import data as training_data

K = 4
B = 3


def _write_rates(workdir: str, round_: int, correct: dict[str, int]) -> None:
  directory = workspace.pass_rates_dir(workdir, round_)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, pass_rate.RECORDS)
  with open(path, "w") as f:
    for pid, c in correct.items():
      f.write(json.dumps({"id": pid, "K": K, "correct": c, "p": c / K}) + "\n")
  artifacts.write_manifest(directory, pass_rate.KIND, round=round_, checksums={pass_rate.RECORDS: artifacts.sha256_file(path)})


@pytest.fixture
def workdir(tmp_path):
  d = str(tmp_path / "ws")
  prepare_lib.prepare(d, "builtin:lab_arithmetic", n_train=40, n_heldout=0, seed=0)
  ids = [p.id for p in prepare_lib.read_problems(d, "train")]
  rng = np.random.default_rng(7)
  _write_rates(d, 0, {pid: int(rng.integers(0, K + 1)) for pid in ids})  # about 2/5 at 0 or K
  return d, ids


def _cfg(workdir, scheme, pool, seed=3, steps=100, recompute_every=0):
  cfg = ExperimentConfig(workdir=workdir, problems=ProblemsConfig(n_train=40, n_heldout=0),
                         weights=WeightConfig(scheme=scheme),
                         train=TrainConfig(steps=steps, batch_size=B, one_pass=True, pool=pool, seed=seed))
  return dataclasses.replace(cfg, pass_rate=dataclasses.replace(cfg.pass_rate, recompute_every=recompute_every))


def _records(workdir, round_):
  return {r["id"]: r["correct"] for r in pass_rate.read_records(workspace.pass_rates_dir(workdir, round_))}


@pytest.mark.parametrize("scheme,pool", [("uniform", 24), ("hard_filter", 24), ("paced", 24), ("hard_filter", 0)])
def test_one_pass_draws_each_kept_problem_of_its_pool_once(workdir, scheme, pool):
  d, ids = workdir
  cfg = _cfg(d, scheme, pool)
  correct = _records(d, 0)
  # By hand: hard_filter and PACED (1,1) drop exactly the problems solved 0 or K times.
  kept = [pid for pid in (ids[:pool] if pool else ids) if scheme == "uniform" or 0 < correct[pid] < K]
  steps = training_data.one_pass_steps(cfg)
  assert steps == len(kept) // B
  data = training_data.weighted_problems(cfg)
  drawn = [p.id for s in range(steps) for p in data.batch(s, B, cfg.train.seed)]
  assert len(drawn) == len(set(drawn)) == steps * B          # never twice
  assert set(drawn) <= set(kept)                             # only kept problems of the pool
  assert len(set(kept) - set(drawn)) < B                     # all but a last partial batch
  with pytest.raises(IndexError):
    data.batch(steps, B, cfg.train.seed)
  other = [p.id for s in range(steps) for p in training_data.weighted_problems(
      dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=4))).batch(s, B, 4)]
  assert other != drawn and set(other) <= set(kept)          # the seed changes the walk, not the pool


def test_a_recompute_reweights_only_undrawn_problems_and_resumes_the_walk(workdir):
  d, ids = workdir
  every = 2
  cfg = _cfg(d, "hard_filter", 0, recompute_every=every)
  first, drawn0 = training_data.one_pass_walk(cfg, 0)
  assert drawn0 == frozenset()
  batches = [[p.id for p in first.batch(s, B, 3)] for s in range(every)]
  left = training_data.undrawn(cfg, first, drawn0, every)
  assert {p.id for p in left} == set(ids) - {i for b in batches for i in b}
  # Round 1 (what the trainer's recompute writes): pass rates of the undrawn problems only, some changed.
  _write_rates(d, 1, {p.id: (i % (K + 1)) for i, p in enumerate(left)})
  second, drawn1 = training_data.one_pass_walk(cfg, 1)
  assert drawn1 == {i for b in batches for i in b} and second.first_step == every
  rates1 = _records(d, 1)
  later = [p.id for s in range(every, second.steps_left(B)) for p in second.batch(s, B, 3)]
  everything = [i for b in batches for i in b] + later
  assert len(everything) == len(set(everything))             # no problem twice across the recompute
  assert all(0 < rates1[i] < K for i in later)               # the second part follows the new weights
  assert second.steps_left(B) == every + sum(0 < c < K for c in rates1.values()) // B
