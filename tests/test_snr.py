"""Gradient SNR: statistics with known answers, the count-sketch projection, one run on a tiny workspace."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import tiny_workspace
from paced_jax import artifacts, mesh as mesh_lib
from paced_jax.analysis import snr
from paced_jax.analysis import snr_stats
from paced_jax.training import trainer
from paced_jax.training import data as training_data
from paced_jax.training import train_step as ts
from paced_jax.config import MeshConfig
from paced_jax.training.packing import pack
from stage_fixtures import tiny_experiment


def test_pure_noise_matches_exact_expectation():
  rng = np.random.default_rng(0)
  n, D, trials = 8, 64, 3000
  values = np.array([snr_stats.snr_statistic(rng.normal(size=(n, D)) * 3.0) for _ in range(trials)])
  expected = D / (D * (n - 1) - 2)  # E[F(D, D(n-1))] / (n - 1)
  assert snr_stats.noise_floor(n, D) == pytest.approx(expected)
  se = values.std() / np.sqrt(trials)
  assert abs(values.mean() - expected) < 4 * se, (values.mean(), expected, se)
  assert abs(values.mean() - 1 / n) > 10 * se  # the floor is 1/(n-1), not 1/n


def test_degenerate_bins():
  g = np.random.default_rng(1).normal(size=16) * 1e-3
  same = np.tile(g, (5, 1))
  assert snr_stats.snr_statistic(same) == np.inf  # exact: no rounding residue in the spread
  assert snr_stats.bootstrap_snr(same) == (np.inf, np.inf)
  assert np.isnan(snr_stats.snr_statistic(np.zeros((5, 16))))  # no signal, no spread: undefined
  assert all(np.isnan(snr_stats.bootstrap_snr(np.zeros((5, 16)))))
  assert np.isnan(snr_stats.snr_statistic(g[None]))  # one problem has no spread to measure
  assert np.isnan(snr_stats.noise_floor(1, 16))
  sym = np.stack([g, -g])  # mean exactly zero, spread > 0
  assert snr_stats.snr_statistic(sym) == 0.0


def test_binned_snr_orders_bins_and_intervals_contain_estimates():
  rng = np.random.default_rng(2)
  D, n = 128, 24
  mu = rng.normal(size=D)
  scales = [0.0, 0.5, 1.5, 0.5, 0.0]
  grads = np.concatenate([s * mu + rng.normal(size=(n, D)) for s in scales])
  correct = np.repeat(np.arange(5), n)
  table = snr_stats.binned_snr(grads, correct, 4, resamples=500, seed=0)
  np.testing.assert_array_equal(table.n_G, [n] * 5)
  np.testing.assert_allclose(table.p_G, [0, 0.25, 0.5, 0.75, 1.0])
  for s, value in zip(scales, table.snr_G):
    # E ~ (||mu s||^2 + D/n) / (D (n-1)/n): the signal's share plus the noise floor.
    approx = (s ** 2 * mu @ mu + D / n) / (D * (n - 1) / n)
    assert value == pytest.approx(approx, rel=0.35)
  assert table.snr_G[2] > table.snr_G[1] > table.snr_G[0]
  assert np.all(table.lo_G <= table.snr_G) and np.all(table.snr_G <= table.hi_G)
  # An empty bin is nan; bins are always all K + 1 values.
  empty = snr_stats.binned_snr(grads[:n], correct[:n], 4)
  assert np.isfinite(empty.snr_G[0]) and np.all(np.isnan(empty.snr_G[1:])) and list(empty.n_G) == [n, 0, 0, 0, 0]


def test_bootstrap_interval_contains_estimate_and_covers_expectation():
  rng = np.random.default_rng(3)
  D, n = 32, 10
  mu = rng.normal(size=D) * 0.5
  draws = [mu + rng.normal(size=(n, D)) for _ in range(150)]
  estimates = np.array([snr_stats.snr_statistic(g) for g in draws])
  intervals = np.array([snr_stats.bootstrap_snr(g, resamples=300, rng=rng) for g in draws])
  assert np.all((intervals[:, 0] <= estimates) & (estimates <= intervals[:, 1]))
  covered = np.mean((intervals[:, 0] <= estimates.mean()) & (estimates.mean() <= intervals[:, 1]))
  assert 0.8 <= covered <= 1.0, covered
  for m in (2, 3):  # tiny bins: resamples of one repeated problem are inf, so the interval is unbounded
    lo, hi = snr_stats.bootstrap_snr(draws[0][:m], rng=rng)
    assert lo <= snr_stats.snr_statistic(draws[0][:m]) <= hi


def test_select_problems_round_robin_over_bins():
  correct = np.array([0] * 10 + [1] * 3 + [4])
  picked = snr_stats.select_problems(correct, 4, 8, seed=0)
  assert np.bincount(correct[picked], minlength=5).tolist() == [4, 3, 0, 0, 1]
  assert len(set(picked.tolist())) == 8
  np.testing.assert_array_equal(picked, snr_stats.select_problems(correct, 4, 8, seed=0))
  assert np.bincount(correct[snr_stats.select_problems(correct, 4, 100)], minlength=5).sum() == len(correct)


def _leaves(rng, scale=1.0):
  shapes = [(300, 200), (50,), (4, 5, 6)]
  return [jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for s in shapes]


PATHS = ["a/kernel", "b", "c/weight"]


def test_count_sketch_preserves_norms_and_inner_products():
  rng = np.random.default_rng(4)
  x, y = _leaves(rng), _leaves(rng)
  flat = lambda leaves: np.concatenate([np.asarray(v).ravel() for v in leaves]).astype(np.float64)
  D = 4096
  sketch = jax.jit(lambda leaves, seed: snr.count_sketch(leaves, PATHS, D, seed), static_argnums=1)
  ratios = [float(jnp.sum(sketch(x, s) ** 2)) / np.sum(flat(x) ** 2) for s in range(3)]
  assert np.all(np.abs(np.array(ratios) - 1) < 6 * np.sqrt(2 / D)), ratios  # Var <= 2 ||x||^4 / D
  xy = [a + 0.7 * b for a, b in zip(x, y)]  # correlated pair: <x, xy> well away from 0
  exact = flat(x) @ flat(xy)
  assert float(jnp.dot(sketch(x, 0), sketch(xy, 0))) == pytest.approx(exact, rel=0.1)
  # Linear, deterministic by seed, and different across seeds and parameter paths.
  np.testing.assert_allclose(sketch(xy, 0), sketch(x, 0) + 0.7 * sketch(y, 0), rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(sketch(x, 0), sketch([v + 0 for v in x], 0))
  assert not np.allclose(sketch(x, 0), sketch(x, 1))
  renamed = jax.jit(lambda leaves: snr.count_sketch(leaves, ["other", "b", "c/weight"], D, 0))(x)
  assert not np.allclose(sketch(x, 0), renamed)


def test_count_sketch_of_sharded_leaves_matches():
  mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  rng = np.random.default_rng(5)
  x = _leaves(rng)
  specs = [P("fsdp", "tensor"), P(), P(None, None, "tensor")]
  sharded = [jax.device_put(v, NamedSharding(mesh, s)) for v, s in zip(x, specs)]
  sketch = jax.jit(lambda leaves: snr.count_sketch(leaves, PATHS, 512, 7))
  np.testing.assert_allclose(sketch(sharded), sketch(x), rtol=1e-5, atol=1e-4)


def test_run_on_tiny_workspace(tmp_path_factory):
  workdir, student = tiny_workspace.prepared(tmp_path_factory)
  cfg = tiny_experiment(workdir)
  regex = "mlp/down_proj"
  directory = snr.run(cfg, student, student, tag="test", num_problems=6, dim=256, param_regex=regex, resamples=200)
  assert directory == os.path.join(workdir, "snr", "test")
  rows = snr_stats.read_csv(os.path.join(directory, "snr.csv"))
  K = cfg.pass_rate.sampling.num_samples
  assert [int(r["correct"]) for r in rows] == list(range(K + 1))
  assert tuple(rows[0]) == snr_stats.CSV_FIELDS
  assert max(float(r["w"]) for r in rows) == 1.0
  with open(os.path.join(directory, "snr.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  manifest = artifacts.read_manifest(directory, snr.KIND)
  assert manifest["source"] == "offline" and manifest["divergence"] == "fkl" and manifest["dim"] == 256
  z = np.load(os.path.join(directory, "projections.npz"))
  N = manifest["counts"]["problems"]
  assert z["grads_ND"].shape == (N, 256) and N == sum(int(r["n"]) for r in rows) == 6

  # The stored row of one problem is the count sketch of its unweighted loss's gradient.
  data = training_data.weighted_problems(cfg)
  problem = next(p for p in data.problems if p.id == str(z["ids"][0]))
  data = dataclasses.replace(data, weight={**data.weight, problem.id: 1.0})
  ex = training_data.offline_examples([problem], data, *training_data.load_offline(cfg, student), student.tokenizer, cfg)
  T = int(manifest["loss"]["seq_len"])
  T = min(T, max(16, 1 << (len(ex[0].tokens) - 1).bit_length()))
  batch, _ = pack(ex, 1, T, cfg.teacher_signal.top_k)
  scfg = dataclasses.replace(trainer.step_config(cfg, student, "fkl", K + 1), weight_norm="none")
  params = nnx.to_pure_dict(student.params)
  with jax.set_mesh(student.mesh):
    grads = jax.jit(jax.grad(lambda p, b: ts.loss_and_metrics(p, b, None, scfg)[0]))(params, batch)
  paths = snr.param_paths(grads)
  chosen = [(g, p) for g, p in zip(jax.tree.leaves(grads), paths) if regex in p]
  expected = snr.count_sketch([g for g, _ in chosen], [p for _, p in chosen], 256, 0)
  np.testing.assert_allclose(z["grads_ND"][0], expected, rtol=1e-4, atol=1e-6 * float(jnp.abs(expected).max()))
  assert z["grad_norm_N"][0] == pytest.approx(float(jnp.sqrt(sum(jnp.sum(g ** 2) for g, _ in chosen))), rel=1e-4)

  # Same settings: reused; other settings under the same tag: refused, naming both values.
  assert snr.run(cfg, student, student, tag="test", num_problems=6, dim=256, param_regex=regex,
                 resamples=200) == directory
  with pytest.raises(artifacts.ArtifactError, match="settings"):
    snr.run(cfg, student, student, tag="test", num_problems=6, dim=128, param_regex=regex, resamples=200)
  with pytest.raises(ValueError, match="matches no parameter"):
    snr.run(cfg, student, student, tag="none", num_problems=4, dim=16, param_regex="no_such_param")
