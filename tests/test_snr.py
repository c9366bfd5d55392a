"""Gradient SNR: statistics with known answers, the count-sketch projection, one run on a tiny workspace."""

from __future__ import annotations

import dataclasses
import os
import shutil

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
  np.testing.assert_array_equal(table.n_A, [n] * 5)
  np.testing.assert_allclose(table.p_A, [0, 0.25, 0.5, 0.75, 1.0])
  for s, value in zip(scales, table.snr_A):
    # E ~ (||mu s||^2 + D/n) / (D (n-1)/n): the signal's share plus the noise floor.
    approx = (s ** 2 * mu @ mu + D / n) / (D * (n - 1) / n)
    assert value == pytest.approx(approx, rel=0.35)
  assert table.snr_A[2] > table.snr_A[1] > table.snr_A[0]
  assert np.all(table.lo_A <= table.snr_A) and np.all(table.snr_A <= table.hi_A)
  # An empty bin is nan; bins are always all K + 1 values.
  empty = snr_stats.binned_snr(grads[:n], correct[:n], 4)
  assert np.isfinite(empty.snr_A[0]) and np.all(np.isnan(empty.snr_A[1:])) and list(empty.n_A) == [n, 0, 0, 0, 0]


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


def _brute_snr(g):
  """The estimator written out row by row in float64."""
  g = np.asarray(g, np.float64)
  mean = g.sum(0) / len(g)
  spread = sum(float((row - mean) @ (row - mean)) for row in g) / len(g)
  return float(mean @ mean) / spread


def _planted(rng, sizes, rhos, X, scale=2.0):
  """g_i = mu_b + noise, noise N(0, scale^2 I_X), ||mu_b||^2 / tr(Sigma) = rho_b."""
  grads = []
  for n, rho in zip(sizes, rhos):
    mu = rng.normal(size=X)
    mu *= np.sqrt(rho * X * scale ** 2 / (mu @ mu))
    grads.append(mu + scale * rng.normal(size=(n, X)))
  return np.concatenate(grads), np.repeat(np.arange(len(sizes)), sizes)


def test_pure_noise_gives_zero_signal_share_whatever_the_bin_sizes():
  rng = np.random.default_rng(10)
  sizes, X = (5, 40, 300), 256
  rhos = []
  for trial in range(8):
    grads, correct = _planted(rng, sizes, (0.0,) * 3, X)
    table = snr_stats.binned_snr(grads, correct, 2, resamples=400, seed=trial)
    for b, n in enumerate(sizes):
      g = grads[correct == b]
      floor = X / (X * (n - 1) - 2)
      assert table.snr_A[b] == pytest.approx(_brute_snr(g), rel=1e-9)
      assert table.floor_A[b] == pytest.approx(floor, rel=1e-12)
      assert table.rho_A[b] == pytest.approx((_brute_snr(g) - floor) / (n * floor), rel=1e-6, abs=1e-12)
    assert np.all((table.rho_lo_A <= 0) & (0 <= table.rho_hi_A)), (table.rho_lo_A, table.rho_hi_A)
    assert not table.above_floor_A.any()
    rhos.append(table.rho_A)
  rhos = np.array(rhos)
  # Unbiased at every n: the mean over trials sits at 0 within 4 standard errors.
  assert np.all(np.abs(rhos.mean(0)) < 4 * rhos.std(0, ddof=1) / np.sqrt(len(rhos)) + 1e-12), rhos.mean(0)


def test_planted_signal_share_is_recovered():
  rng = np.random.default_rng(11)
  sizes, rhos, X = (5, 40, 300, 300), (0.5, 0.1, 0.02, 0.0), 256
  estimates = []
  for trial in range(6):
    grads, correct = _planted(rng, sizes, rhos, X)
    table = snr_stats.binned_snr(grads, correct, 3, resamples=400, seed=trial)
    assert np.all((table.rho_lo_A <= rhos) & (rhos <= table.rho_hi_A)), (table.rho_lo_A, rhos, table.rho_hi_A)
    assert table.above_floor_A.tolist()[1:] == [True, True, False]
    estimates.append(table.rho_A)
  estimates = np.array(estimates)  # unbiased: the mean over draws within 4 standard errors of rho
  se = estimates.std(0, ddof=1) / np.sqrt(len(estimates))
  assert np.all(np.abs(estimates.mean(0) - rhos) < 4 * se + 1e-4), (estimates.mean(0), se)


def test_a_bell_drawn_from_noise_is_not_reported_as_signal():
  # Unequal bins of pure noise: the raw SNR ~ 1 / (n - 1), normalised to its maximum, is a bell.
  rng = np.random.default_rng(12)
  sizes = (710, 300, 160, 110, 90, 87, 120, 200, 400)
  grads, correct = _planted(rng, sizes, (0.0,) * 9, 128)
  table = snr_stats.binned_snr(grads, correct, 8, resamples=400, seed=0)
  bell = table.snr_A / table.snr_A.max()
  assert 3 <= int(np.argmax(bell)) <= 6 and bell[0] < 0.2 and bell[-1] < 0.4
  assert not table.above_floor_A.any()
  rows = [{"p": str(p), "n": str(n), "rho": str(r), "rho_lo": str(lo), "above_floor": str(int(a))}
          for p, n, r, lo, a in zip(table.p_A, table.n_A, table.rho_A, table.rho_lo_A, table.above_floor_A)]
  assert snr_stats.summary(rows).startswith("No bin is distinguishable from its noise floor")
  rows[4]["above_floor"] = "1"
  assert snr_stats.summary(rows, 0.9).startswith("1 of 9 bins sit above their noise floor")


def test_a_bin_of_fewer_than_five_problems_is_never_judged_above_its_floor():
  # Two identical-direction problems: the bootstrap interval is degenerate ([x, inf]), not evidence.
  rng = np.random.default_rng(14)
  grads, correct = _planted(rng, (2, 4, 40), (0.5, 0.5, 0.5), 64)
  table = snr_stats.binned_snr(grads, correct, 2, resamples=400, seed=0)
  assert table.above_floor_A.tolist() == [False, False, True]


def test_intervals_are_simultaneous_over_bins():
  # One bin's interval alone is narrower than the same bin's among 9 measured bins (Bonferroni).
  rng = np.random.default_rng(13)
  grads, correct = _planted(rng, (30,) * 9, (0.0,) * 9, 64)
  alone = snr_stats.binned_snr(grads[correct == 0], np.zeros(30, int), 8, resamples=2000, seed=0)
  among = snr_stats.binned_snr(grads, correct, 8, resamples=2000, seed=0)
  assert among.lo_A[0] < alone.lo_A[0] <= alone.snr_A[0] <= alone.hi_A[0] < among.hi_A[0]


def test_select_problems_defaults_to_all_and_caps_round_robin_over_bins():
  correct = np.array([0] * 10 + [1] * 3 + [4])
  np.testing.assert_array_equal(snr_stats.select_problems(correct, 4), np.arange(len(correct)))
  picked = snr_stats.select_problems(correct, 4, 8, seed=0)
  assert np.bincount(correct[picked], minlength=5).tolist() == [4, 3, 0, 0, 1]
  assert len(set(picked.tolist())) == 8
  np.testing.assert_array_equal(picked, snr_stats.select_problems(correct, 4, 8, seed=0))
  assert np.bincount(correct[snr_stats.select_problems(correct, 4, 100)], minlength=5).sum() == len(correct)
  # equal_n: every bin of >= 2 problems cut to the smallest such bin (3); a lone problem stays.
  equal = snr_stats.select_problems(correct, 4, equal_n=True, seed=1)
  assert np.bincount(correct[equal], minlength=5).tolist() == [3, 3, 0, 0, 1]
  assert np.bincount(correct[snr_stats.select_problems(correct, 4, equal_n=True, stratified=False)],
                     minlength=5).tolist() == [3, 3, 0, 0, 1]


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


def _problem_example(cfg, student, problem_id):
  data = training_data.weighted_problems(cfg)
  problem = next(p for p in data.problems if p.id == problem_id)
  data = dataclasses.replace(data, weight={**data.weight, problem.id: 1.0})
  return training_data.offline_examples([problem], data, *training_data.load_offline(cfg, student),
                                        student.tokenizer, cfg)


def _sequence_length(cfg, student, problem_id):
  return len(_problem_example(cfg, student, problem_id)[0].tokens)


def _sketch_of_problem(cfg, student, params, problem_id, T, regex, dim):
  """(count sketch, norm) of one problem's unweighted-loss gradient, computed directly."""
  batch, _ = pack(_problem_example(cfg, student, problem_id), 1, T, cfg.teacher_signal.top_k)
  K = cfg.pass_rate.sampling.num_samples
  scfg = dataclasses.replace(trainer.step_config(cfg, student, "fkl", K + 1), weight_norm="none")
  with jax.set_mesh(student.mesh):
    grads = jax.jit(jax.grad(lambda p, b: ts.loss_and_metrics(p, b, None, scfg)[0]))(params, batch)
  chosen = [(g, p) for g, p in zip(jax.tree.leaves(grads), snr.param_paths(grads)) if regex in p]
  sketch = snr.count_sketch([g for g, _ in chosen], [p for _, p in chosen], dim, 0)
  return sketch, float(jnp.sqrt(sum(jnp.sum(g ** 2) for g, _ in chosen)))


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
  assert z["grads_PX"].shape == (N, 256) and N == sum(int(r["n"]) for r in rows) == 6

  assert [r["noise_floor"] for r in rows if int(r["n"]) >= 2] == [f"{256 / (256 * (int(r['n']) - 1) - 2):.6g}"
                                                                  for r in rows if int(r["n"]) >= 2]
  assert open(os.path.join(directory, snr.SUMMARY)).read().strip() == snr_stats.summary(rows, 0.9)

  # The stored row of one problem is the count sketch of its unweighted loss's gradient.
  pid = str(z["ids"][0])
  T = min(int(manifest["loss"]["seq_len"]), max(16, 1 << (_sequence_length(cfg, student, pid) - 1).bit_length()))
  expected, norm = _sketch_of_problem(cfg, student, nnx.to_pure_dict(student.params), pid, T, regex, 256)
  np.testing.assert_allclose(z["grads_PX"][0], expected, rtol=1e-4, atol=1e-6 * float(jnp.abs(expected).max()))
  assert z["grad_norm_P"][0] == pytest.approx(norm, rel=1e-4)

  # Same settings: reused; other settings under the same tag: refused, naming both values.
  assert snr.run(cfg, student, student, tag="test", num_problems=6, dim=256, param_regex=regex,
                 resamples=200) == directory
  with pytest.raises(artifacts.ArtifactError, match="settings"):
    snr.run(cfg, student, student, tag="test", num_problems=6, dim=128, param_regex=regex, resamples=200)
  with pytest.raises(ValueError, match="matches no parameter"):
    snr.run(cfg, student, student, tag="none", num_problems=4, dim=16, param_regex="no_such_param")


@pytest.mark.slow  # trains 2 steps, then measures all 24 problems (~40 s)
def test_run_at_a_training_checkpoint_measures_every_problem(tmp_path_factory):
  prepared, student = tiny_workspace.prepared(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  shutil.copytree(prepared, workdir, ignore=shutil.ignore_patterns("snr", "report"))
  cfg = tiny_experiment(workdir, track="distill", train__steps=2, train__checkpoint_every=2, snr__step=2)
  trainer.train(cfg, student, student, progress=False)
  regex, dim = "mlp/down_proj", 64
  directory = snr.run(cfg, student, student, dim=dim, param_regex=regex, resamples=50)
  assert directory == os.path.join(workdir, "snr", "step2")
  manifest = artifacts.read_manifest(directory, snr.KIND)
  assert manifest["model_fingerprint"] == f"{student.fingerprint}@step2" and manifest["settings"]["step"] == 2
  # num_problems = 0: every training problem with a sequence is measured.
  assert manifest["counts"]["problems"] + manifest["counts"]["without_sequence"] == cfg.problems.n_train
  z = np.load(os.path.join(directory, "projections.npz"))
  pid = str(z["ids"][0])
  T = min(cfg.train.seq_len, max(16, 1 << (_sequence_length(cfg, student, pid) - 1).bit_length()))
  _, trained = trainer.restore_params(cfg, student, 2)
  at_step, _ = _sketch_of_problem(cfg, student, trained, pid, T, regex, dim)
  initial, _ = _sketch_of_problem(cfg, student, nnx.to_pure_dict(student.params), pid, T, regex, dim)
  np.testing.assert_allclose(z["grads_PX"][0], at_step, rtol=1e-4, atol=1e-6 * float(jnp.abs(at_step).max()))
  assert not np.allclose(z["grads_PX"][0], initial, rtol=1e-3)  # the checkpoint, not the initial student
  with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 1 \(kept: \[2\]\)"):
    snr.run(cfg, student, student, step=1, dim=dim, param_regex=regex, resamples=50)
