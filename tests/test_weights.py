"""weights.py against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paced_jax.training import losses
from paced_jax.training import weights
from paced_jax.config import WEIGHT_NORMS, WeightConfig


def test_beta_kernel_values():
  assert weights.beta_kernel(0.5) == 0.25
  np.testing.assert_allclose(weights.beta_kernel(np.array([0.0, 0.25, 1.0])), [0.0, 0.1875, 0.0])
  assert weights.beta_kernel(0.5, alpha=2.0, beta=1.0) == 0.125
  np.testing.assert_allclose(weights.beta_kernel(jnp.array([0.2]), 1.0, 3.0), [0.2 * 0.8**3], rtol=1e-6)


def test_baseline_schemes():
  p = np.array([0.0, 0.125, 0.5, 1.0])
  np.testing.assert_array_equal(weights.uniform(p), [1, 1, 1, 1])
  np.testing.assert_array_equal(weights.hard_filter(p), [0, 1, 1, 0])


def test_pass_rate_and_posterior_mean():
  np.testing.assert_allclose(weights.pass_rate([0, 2, 8], 8), [0.0, 0.25, 1.0])
  np.testing.assert_allclose(weights.pass_rate([0, 2, 8], 8, posterior_mean=True), [0.1, 0.3, 0.9])


def test_paced_weights_drop_and_normalise():
  correct = np.array([0, 4, 2, 8, 6])  # p = 0, .5, .25, 1, .75 -> w = 0, .25, .1875, 0, .1875
  w, keep = weights.problem_weights(correct, 8, WeightConfig())
  np.testing.assert_array_equal(keep, [False, True, True, False, True])
  np.testing.assert_allclose(w, np.array([0, 0.25, 0.1875, 0, 0.1875]) / (0.625 / 3), rtol=1e-6)
  assert w.dtype == np.float32
  np.testing.assert_allclose(w[keep].mean(), 1.0, rtol=1e-6)


def test_norms_none_and_batch_leave_raw_weights():
  correct = np.array([0, 4, 2])
  for norm in ("none", "batch"):
    w, keep = weights.problem_weights(correct, 8, WeightConfig(norm=norm))
    np.testing.assert_allclose(w, [0.0, 0.25, 0.1875])
    np.testing.assert_array_equal(keep, [False, True, True])


def test_keep_zero_weight_keeps_and_averages_over_all():
  w, keep = weights.problem_weights(np.array([0, 4, 8, 4]), 8, WeightConfig(keep_zero_weight=True))
  assert keep.all()
  np.testing.assert_allclose(w, [0.0, 2.0, 0.0, 2.0])


def test_posterior_mean_keeps_every_problem():
  w, keep = weights.problem_weights(np.array([0, 1, 2]), 2, WeightConfig(posterior_mean=True, norm="none"))
  assert keep.all()
  np.testing.assert_allclose(w, [0.25 * 0.75, 0.25, 0.25 * 0.75])


def test_baseline_problem_weights():
  correct = np.array([0, 3, 8, 5])
  w, keep = weights.problem_weights(correct, 8, WeightConfig(scheme="uniform"))
  np.testing.assert_allclose(w, 1.0)
  assert keep.all()
  w, keep = weights.problem_weights(correct, 8, WeightConfig(scheme="hard_filter"))
  np.testing.assert_array_equal(keep, [False, True, False, True])
  np.testing.assert_allclose(w, [0, 1, 0, 1])
  # The filter reads the observed rate even when PACED would use the posterior mean.
  _, keep = weights.problem_weights(correct, 8, WeightConfig(scheme="hard_filter", posterior_mean=True))
  np.testing.assert_array_equal(keep, [False, True, False, True])


def test_errors():
  with pytest.raises(ValueError, match="weight 0"):
    weights.problem_weights(np.array([0, 8, 8]), 8, WeightConfig())
  with pytest.raises(ValueError, match="weight 0"):
    weights.problem_weights(np.array([0, 8]), 8, WeightConfig(keep_zero_weight=True))
  with pytest.raises(ValueError, match=r"\[0, K=8\]"):
    weights.problem_weights(np.array([3, 9]), 8, WeightConfig())
  with pytest.raises(ValueError, match="positive integer"):
    weights.pass_rate([1], 0)
  with pytest.raises(ValueError, match="integers"):
    weights.pass_rate([1.5], 4)
  with pytest.raises(ValueError, match="scheme"):
    WeightConfig(scheme="akl")
  with pytest.raises(ValueError, match="norm"):
    WeightConfig(norm="mean")
  # An all-zero dataset is fine when nothing is normalised by its mean.
  w, keep = weights.problem_weights(np.array([0, 8]), 8, WeightConfig(norm="none"))
  assert not keep.any() and not w.any()


def test_effective_sample_size():
  def ess(w):
    w = np.asarray(w, np.float64)
    return float(weights.effective_sample_size(w.sum(), (w ** 2).sum()))
  assert ess(np.ones(7)) == pytest.approx(7.0)
  assert ess([0.0, 3.0, 0.0]) == pytest.approx(1.0)
  assert ess([1.0, 3.0]) == pytest.approx(16 / 10)
  assert float(jax.jit(weights.effective_sample_size)(jnp.float32(0), jnp.float32(0))) == 0.0


def test_pass_rate_buckets_and_per_bucket_sums():
  sums, counts = jax.jit(weights.per_bucket_sums, static_argnums=3)(
    jnp.array([[1.0, 2.0], [4.0, 8.0]]), jnp.array([[0, 2], [2, 1]]), jnp.array([[True, True], [True, False]]), 3
  )
  np.testing.assert_allclose(sums, [1.0, 0.0, 6.0])
  np.testing.assert_allclose(counts, [1.0, 0.0, 2.0])


def test_every_weight_norm_is_accepted_by_the_loss_reduction():
  for norm in WEIGHT_NORMS:
    x_BT = jnp.ones((1, 2))
    losses.loss_denominator(x_BT, x_BT.astype(jnp.int32), x_BT, weight_norm=WeightConfig(norm=norm).norm)
