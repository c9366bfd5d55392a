"""Student bucket log-probs from final hidden states, chunk by chunk over T, with a hand-written backward.

The training loss needs the student's softmax over the whole vocabulary folded onto the
teacher's k+1 buckets (losses.py). Holding [B, T, V] float32 logits is out of the question for
150k vocabularies, so logits are made C positions at a time, and remade in the backward pass.

Axis letters as in paced_jax/__init__.py (B rows, T positions, C chunk of T, D model dim, V vocabulary,
K teacher top-k, N = K + 1 buckets).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from paced_jax.training import losses

F32 = jnp.float32


def chunked_student_bucket_logprobs(
  hidden_BTD: jax.Array,
  head: jax.Array,
  teacher_ids_BTK: jax.Array,
  *,
  chunk_size: int,
  head_axes: str = "dv",
  temperature: float = 1.0,
  vocab_size: int | None = None,
) -> jax.Array:
  """`losses.student_bucket_logprobs(hidden @ lm_head, ...)` without ever holding all [B, T, V] logits.

  Logits are made `chunk_size` positions at a time and remade in the backward pass, so the peak
  is one [B, C, V] float32 block (plus its gradient) in either direction. The matmul
  accumulates in float32 whatever the dtype of `head` (bf16 compute weights are fine). `head` is
  [D, V] ("dv") or, for a tied embedding used as it is stored, [V, D] ("vd").
  """
  B, T, _ = hidden_BTD.shape
  C = min(chunk_size, T)
  num_chunks = -(-T // C)
  pad = num_chunks * C - T  # the last chunk is padded; its extra positions are dropped below

  def chunks(x):  # [B, T, ...] -> [n, B, C, ...], n = num_chunks
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(B, num_chunks, C, *x.shape[2:]), 1, 0)

  def bucket_logprobs_of_chunk(chunk):
    hidden_BCD, ids_BCK = chunk
    return _chunk_bucket_logprobs(hidden_BCD, head, ids_BCK, head_axes, temperature, vocab_size)

  log_q_nBCN = jax.lax.map(bucket_logprobs_of_chunk, (chunks(hidden_BTD), chunks(teacher_ids_BTK)))
  return jnp.moveaxis(log_q_nBCN, 0, 1).reshape(B, num_chunks * C, -1)[:, :T]


def _chunk_logits(hidden_BCD, head, head_axes, temperature, vocab_size):
  logits_BCV = jnp.einsum(f"bcd,{head_axes}->bcv", hidden_BCD, head, preferred_element_type=F32)
  return losses.scaled_logits(logits_BCV, temperature, vocab_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _chunk_bucket_logprobs(hidden_BCD, head, ids_BCK, head_axes, temperature, vocab_size):
  """`losses.student_bucket_logprobs(hidden @ lm_head)` for one chunk, with a hand-written backward.

  Autodiff through a rematerialised `student_bucket_logprobs` replays all of its passes over the
  [B, C, V] block and adds as many again; on CPU, where each such pass is single-threaded, that
  was most of the loss's time. This backward keeps only per-position sums and, with
  s = logits - max, z = sum_v e^s, o = sum of e^s outside the top-k, G = sum of the bucket
  cotangents g, uses d s_v = e^s_v (g_tail / o [v outside top-k] - G / z) + g_k [v = id_k].
  """
  return _chunk_fwd(hidden_BCD, head, ids_BCK, head_axes, temperature, vocab_size)[0]


def _chunk_fwd(hidden_BCD, head, ids_BCK, head_axes, temperature, vocab_size):
  logits_BCV = _chunk_logits(hidden_BCD, head, head_axes, temperature, vocab_size)
  log_q_BCN, max_BC1, z_BC, outside_BC = losses.fold_onto_buckets(logits_BCV, ids_BCK)
  return log_q_BCN, (hidden_BCD, head, ids_BCK, max_BC1, z_BC, outside_BC)


def _chunk_bwd(head_axes, temperature, vocab_size, residuals, g_BCN):
  hidden_BCD, head, ids_BCK, max_BC1, z_BC, outside_BC = residuals
  e_BCV = jnp.exp(_chunk_logits(hidden_BCD, head, head_axes, temperature, vocab_size) - max_BC1)
  g_BCK, g_tail_BC = g_BCN[..., :-1], g_BCN[..., -1]
  # losses.log_tail floors the tail: below the floor its gradient is 0.
  above_floor_BC = outside_BC / z_BC > losses.TAIL_FLOOR
  g_tail_BC = jnp.where(above_floor_BC, g_tail_BC, 0.0)
  tail_coef_BC = g_tail_BC / jnp.where(above_floor_BC, outside_BC, 1.0)  # o can be 0 (k = V)
  total_BC = g_BCK.sum(-1) + g_tail_BC
  ds_BCV = e_BCV * (tail_coef_BC - total_BC / z_BC)[..., None]
  # Top-k tokens: their own cotangent, and no share of the tail's.
  e_top_BCK = jnp.take_along_axis(e_BCV, ids_BCK, axis=-1)
  ds_BCV = _scatter_add(ds_BCV, ids_BCK, g_BCK - e_top_BCK * tail_coef_BC[..., None])
  ds_BCV = (ds_BCV / temperature).astype(head.dtype)
  d_hidden = jnp.einsum(f"bcv,{head_axes}->bcd", ds_BCV, head, preferred_element_type=F32)
  d_head = jnp.einsum(f"bcd,bcv->{head_axes}", hidden_BCD, ds_BCV, preferred_element_type=F32)
  return d_hidden.astype(hidden_BCD.dtype), d_head.astype(head.dtype), None


def _scatter_add(x_BCV, ids_BCK, values_BCK):
  B, C, K = ids_BCK.shape
  b_BCK = jnp.broadcast_to(jnp.arange(B)[:, None, None], (B, C, K))
  c_BCK = jnp.broadcast_to(jnp.arange(C)[None, :, None], (B, C, K))
  return x_BCV.at[b_BCK, c_BCK, ids_BCK].add(values_BCK)


_chunk_bucket_logprobs.defvjp(_chunk_fwd, _chunk_bwd)
