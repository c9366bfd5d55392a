"""AKL on the k+1 buckets (top-k, tail) against a dense float64 AKL: the bucketed tail gap
|p_tail - q_tail| understates the sum over tail tokens, so the head share is too large, by a
bounded amount (docs/method.md): h_dense <= h_bucket and h_dense >= g_head / (g_all + 2 min(p_tail, q_tail))."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from paced_jax.training import losses

V, TOP_K, MU = 300, 12, 0.5


def _dense_head_share(p, q, mu):
  order = np.argsort(-p, kind="stable")
  gap = np.abs(p - q)[order]
  head = np.cumsum(p[order]) <= mu
  head[0] = True
  return gap[head].sum() / gap.sum()


def _cases(rng, n):
  """Peaked teachers (top-k mass > mu, so the head lies inside the top-k) and students that spread mass."""
  out = []
  for i in range(n):
    p = np.exp(3.0 * rng.normal(size=V))
    p /= p.sum()
    q = np.exp((0.5 + i % 3) * rng.normal(size=V))
    q /= q.sum()
    out.append((p, q))
  return out


def test_bucketed_head_share_overstates_the_dense_one_within_the_bound():
  rng = np.random.default_rng(0)
  cases = [(p, q) for p, q in _cases(rng, 60) if np.sort(p)[::-1][:TOP_K].sum() > MU]
  assert len(cases) >= 30
  log_p, log_q, dense, lower = [], [], [], []
  for p, q in cases:
    top = np.argsort(-p, kind="stable")[:TOP_K]
    p_tail, q_tail = 1 - p[top].sum(), 1 - q[top].sum()
    log_p.append(np.log(np.append(p[top], p_tail)))
    log_q.append(np.log(np.append(q[top], q_tail)))
    dense.append(_dense_head_share(p, q, MU))
    gap = np.abs(p[top] - q[top])
    head = np.cumsum(p[top]) <= MU
    head[0] = True
    g_all_bucket = gap.sum() + abs(p_tail - q_tail)
    lower.append(gap[head].sum() / (g_all_bucket + 2 * min(p_tail, q_tail)))
  log_p_BTN = jnp.asarray(np.array(log_p)[None], jnp.float32)
  log_q_BTN = jnp.asarray(np.array(log_q)[None], jnp.float32)
  akl = np.asarray(losses.adaptive_kl(log_p_BTN, log_q_BTN, mu=MU), np.float64)[0]
  fkl = np.asarray(losses.forward_kl(log_p_BTN, log_q_BTN), np.float64)[0]
  rkl = np.asarray(losses.reverse_kl(log_p_BTN, log_q_BTN), np.float64)[0]
  usable = np.abs(fkl - rkl) > 1e-2  # the mix h F + (1 - h) R pins h down only where F and R differ
  assert usable.sum() >= 20
  h_bucket = ((akl - rkl) / (fkl - rkl))[usable]
  dense, lower = np.array(dense)[usable], np.array(lower)[usable]
  tol = 1e-3  # float32 losses
  assert np.all(dense <= h_bucket + tol), (dense - h_bucket).max()
  assert np.all(lower - tol <= dense), (lower - dense).max()
  assert np.any(h_bucket > dense + 0.01)  # the overstatement is real, not a rounding artefact
