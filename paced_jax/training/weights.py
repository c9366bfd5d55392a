"""Problem weights from student pass rates (METHOD.md sections 1 and 2).

Host side, once over the dataset: `problem_weights` turns each problem's count of correct
rollouts into a weight and a keep mask. In the step: `effective_sample_size` and
`per_bucket_sums` (jnp, jit-friendly) feed the metrics.

Axis letters (paced_jax/__init__.py): P problems, A pass-rate buckets (R + 1), E sequences (any
shape works where E is written).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from paced_jax.config import WeightConfig



def beta_kernel(p, alpha: float = 1.0, beta: float = 1.0):
  """PACED weight w(p) = p^alpha (1 - p)^beta; numpy or jnp in, same out."""
  return p**alpha * (1 - p) ** beta


def uniform(p):
  """The unweighted baseline: w = 1."""
  return p * 0 + 1.0  # rather than ones_like: works on numpy and jnp arrays alike


def hard_filter(p):
  """The filtering baseline: w = 1 on problems the student sometimes solves, else 0."""
  return ((p > 0) & (p < 1)) * 1.0


def pass_rate(correct, K: int, *, posterior_mean: bool = False) -> np.ndarray:
  """Pass-rate estimate per problem: c / K, or the Beta(1,1) posterior mean (c + 1) / (K + 2)."""
  correct_P = _check_counts(correct, K)
  if posterior_mean:
    return (correct_P + 1.0) / (K + 2.0)
  return correct_P / float(K)


def raw_weights(correct, K: int, cfg: WeightConfig) -> np.ndarray:
  """Unnormalised weight per problem under `cfg.scheme`, float64 [P]."""
  if cfg.scheme == "paced":
    return beta_kernel(pass_rate(correct, K, posterior_mean=cfg.posterior_mean), cfg.alpha, cfg.beta)
  if cfg.scheme == "uniform":
    return uniform(pass_rate(correct, K))
  # The filter reads the observed rate: a posterior mean is never 0 or 1, so it would keep everything.
  return hard_filter(pass_rate(correct, K))


def problem_weights(correct, K: int, cfg: WeightConfig) -> tuple[np.ndarray, np.ndarray]:
  """Weight (float32 [P]) and keep mask (bool [P]) of every problem, from its correct count of K.

  Problems with w = 0 are dropped (keep False, weight 0) unless `cfg.keep_zero_weight`.
  `dataset_mean` divides by the mean weight over the kept problems, so they average 1;
  `batch` and `none` return the raw weights (`batch` is normalised inside the train step).
  """
  w_P = raw_weights(correct, K, cfg)
  keep_P = np.ones_like(w_P, dtype=bool) if cfg.keep_zero_weight else w_P > 0
  w_P = np.where(keep_P, w_P, 0.0)
  if cfg.norm == "dataset_mean":
    mean = w_P[keep_P].mean() if keep_P.any() else 0.0
    if not mean > 0:
      raise ValueError(
        f"dataset_mean normalisation: every kept problem has weight 0 ({keep_P.sum()} kept of "
        f"{w_P.size}, scheme {cfg.scheme!r}); with pass rates only 0 or 1 there is nothing to weight"
      )
    w_P = w_P / mean
  return w_P.astype(np.float32), keep_P


def effective_sample_size(weight_sum, weight_sq_sum):
  """(sum w)^2 / sum w^2 from the two sums: n for n equal weights, 1 if one holds everything, 0 if all are 0."""
  return weight_sum ** 2 / jnp.maximum(weight_sq_sum, 1e-30)


def per_bucket_sums(value_E, bucket_E, valid_E, num_buckets: int) -> tuple[jax.Array, jax.Array]:
  """Sum of `value_E` and count of valid entries per bucket, each [G]; their ratio is the bucket mean."""
  valid_E = jnp.asarray(valid_E, bool).reshape(-1)
  bucket_E = jnp.asarray(bucket_E, jnp.int32).reshape(-1)
  value_E = jnp.where(valid_E, jnp.asarray(value_E, jnp.float32).reshape(-1), 0.0)
  sums_A = jax.ops.segment_sum(value_E, bucket_E, num_segments=num_buckets)
  counts_A = jax.ops.segment_sum(valid_E.astype(jnp.float32), bucket_E, num_segments=num_buckets)
  return sums_A, counts_A


def _check_counts(correct, K: int) -> np.ndarray:
  if int(K) != K or K < 1:
    raise ValueError(f"K (rollouts per problem) must be a positive integer, got {K}")
  correct_P = np.asarray(correct)
  if correct_P.dtype.kind not in "iu" and not np.all(correct_P == np.round(correct_P)):
    raise ValueError("correct counts must be integers")
  if correct_P.size and (correct_P.min() < 0 or correct_P.max() > K):
    raise ValueError(f"correct counts must lie in [0, K={K}], got range [{correct_P.min()}, {correct_P.max()}]")
  return correct_P.astype(np.float64)
