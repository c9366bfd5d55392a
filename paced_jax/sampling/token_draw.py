"""One token per decode row from its logits: temperature, top-k, top-p, and a draw keyed by the
row's sequence and step (so the samples do not depend on batching; sampler.py).

Axis letters: B rows, V vocabulary; in the two-level searches N vocabulary blocks of L ids each,
k top-k candidates.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from paced_jax.config import SamplingConfig

# Vocabulary block of the two-level searches below. XLA:CPU runs lax.top_k and sort over a whole
# 50k-150k vocabulary at about 1 s per step for 64 rows, and B x V Gumbel draws at 0.3 s; searching
# block summaries first and then a few blocks costs milliseconds.
_BLOCK = 256
_TOP_P_CANDIDATES = 256  # top-p without top-k looks at this many tokens (exact full sort if too few)


def filter_logits(logits_BV, cfg: SamplingConfig, valid_vocab: int):
  """Temperature, then top-k, then top-p (the order transformers applies them), over the whole
  vocabulary: the exact reference, and the fallback of `sample_tokens`."""
  V = logits_BV.shape[-1]
  logits_BV = jnp.where(jnp.arange(V) < valid_vocab, logits_BV.astype(jnp.float32), -jnp.inf)
  if cfg.greedy:
    return logits_BV
  logits_BV = logits_BV / cfg.temperature
  if cfg.top_k and cfg.top_k < V:
    kth_B1 = jax.lax.top_k(logits_BV, cfg.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if cfg.top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < top_p.
    keep_BV = mass_before_BV < cfg.top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return logits_BV


def _blocks(x_BV, fill):
  """[B, V] -> [B, n, _BLOCK], the last block padded with `fill`."""
  B, V = x_BV.shape
  return jnp.pad(x_BV, ((0, 0), (0, -V % _BLOCK)), constant_values=fill).reshape(B, -1, _BLOCK)


def top_candidates(logits_BV, k: int):
  """The k largest logits of each row, descending, and their ids.

  Exact: a block holding one of a row's k largest values has a maximum among the k largest block
  maxima, so only those k blocks are searched.
  """
  B, V = logits_BV.shape
  blocks_BNL = _blocks(logits_BV, -jnp.inf)
  if k >= blocks_BNL.shape[1]:
    return jax.lax.top_k(logits_BV, min(k, V))
  _, block_Bk = jax.lax.top_k(blocks_BNL.max(-1), k)
  candidates_BM = jnp.take_along_axis(blocks_BNL, block_Bk[:, :, None], axis=1).reshape(B, k * _BLOCK)
  values_Bk, j_Bk = jax.lax.top_k(candidates_BM, k)
  return values_Bk, jnp.take_along_axis(block_Bk, j_Bk // _BLOCK, axis=1) * _BLOCK + j_Bk % _BLOCK


def _inverse_cdf_sample(logits_BV, keys_B):
  """One draw per row from softmax(logits) by inverting its CDF, block sums first."""
  u_B = 1.0 - jax.vmap(jax.random.uniform)(keys_B)  # in (0, 1]: a zero-probability token is never hit
  probs_BNL = _blocks(jnp.exp(logits_BV - logits_BV.max(-1, keepdims=True)), 0.0)
  N, L = probs_BNL.shape[1:]
  block_cdf_BN = jnp.cumsum(probs_BNL.sum(-1), axis=-1)
  target_B = u_B * block_cdf_BN[:, -1]
  block_B = jnp.minimum(jnp.sum(block_cdf_BN < target_B[:, None], axis=-1), N - 1)
  before_B = jnp.where(block_B > 0, jnp.take_along_axis(block_cdf_BN, jnp.maximum(block_B - 1, 0)[:, None], 1)[:, 0], 0.0)
  probs_BL = jnp.take_along_axis(probs_BNL, block_B[:, None, None], axis=1)[:, 0]
  inner_B = jnp.sum(jnp.cumsum(probs_BL, axis=-1) < (target_B - before_B)[:, None], axis=-1)
  # Rounding between the block sum and the in-block cumsum can overshoot: stay on a token with mass.
  last_B = L - 1 - jnp.argmax((probs_BL > 0)[:, ::-1], axis=-1)
  return block_B * L + jnp.minimum(inner_B, last_B)


def _sample_filtered(logits_BV, keys_B, cfg: SamplingConfig):
  """Top-k and/or top-p sampling on the top candidates only; exact (see `top_candidates`)."""
  k = cfg.top_k if cfg.top_k else _TOP_P_CANDIDATES
  values_Bk, ids_Bk = top_candidates(logits_BV, k)
  covered = jnp.bool_(True)
  if cfg.top_p < 1.0:
    # The nucleus of the distribution left after top-k (or of the full one without top-k).
    log_norm_B1 = jax.nn.logsumexp(values_Bk if cfg.top_k else logits_BV, axis=-1, keepdims=True)
    probs_Bk = jnp.exp(values_Bk - log_norm_B1)
    values_Bk = jnp.where(jnp.cumsum(probs_Bk, axis=-1) - probs_Bk < cfg.top_p, values_Bk, -jnp.inf)
    if not cfg.top_k:
      covered = jnp.all(jnp.sum(probs_Bk, axis=-1) >= cfg.top_p)
  fast = lambda: jnp.take_along_axis(ids_Bk, jax.vmap(jax.random.categorical)(keys_B, values_Bk)[:, None], 1)[:, 0]
  if cfg.top_k:
    return fast()
  full = lambda: jax.vmap(jax.random.categorical)(keys_B, filter_logits(logits_BV, dataclasses.replace(cfg, temperature=1.0), logits_BV.shape[-1]))
  return jax.lax.cond(covered, fast, full)


def sample_tokens(logits_BV, seq_key_B, step_B, cfg: SamplingConfig, valid_vocab: int):
  """One token per row; row b's randomness is fold_in(fold_in(seed, seq_key_B[b]), step_B[b])."""
  V = logits_BV.shape[-1]
  logits_BV = jnp.where(jnp.arange(V) < valid_vocab, logits_BV.astype(jnp.float32), -jnp.inf)
  if cfg.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / cfg.temperature
  base = jax.random.key(cfg.seed)
  keys_B = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.fold_in(base, s), t))(seq_key_B, step_B)
  if (cfg.top_k and cfg.top_k < valid_vocab) or cfg.top_p < 1.0:
    return _sample_filtered(logits_BV, keys_B, cfg).astype(jnp.int32)
  return _inverse_cdf_sample(logits_BV, keys_B).astype(jnp.int32)
