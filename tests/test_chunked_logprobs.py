"""Chunked student bucket log-probs: values and hand-written gradients against the dense path
(itself checked against numpy and finite differences in test_losses.py), bf16 heads, memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loss_refs
from paced_jax.training import losses
from test_losses import F32, TOL, f32, hidden_case, jit, ref_sparse


@pytest.mark.parametrize("kind,temperature,K", [("rkl", 1.0, 5), ("fkl", 0.7, 5), ("akl", 1.3, 5), ("jsd", 1.0, 5),
                                                ("fkl", 1.0, 27)])
def test_chunked_equals_unchunked(kind, temperature, K):
  """The chunked path has its own backward: values and gradients equal autodiff through the
  dense path, for every divergence, at temperatures, and with k = V (empty tails: the floor)."""
  V = 27  # the last three rows of the head are padding
  hidden_BTD, lm_head_DV, _, teacher = hidden_case(9, V=30, K=K, vocab_size=V)
  cot_BT = f32(np.random.default_rng(2).uniform(size=hidden_BTD.shape[:2]))
  options = dict(kind=kind, temperature=temperature, vocab_size=V)

  @functools.partial(jit, static_argnames="chunk_size")
  def value_and_grads(h, w, chunk_size=None):
    def loss(h, w):
      if chunk_size is None:
        div_BT = loss_refs.token_divergence(h @ w, teacher, **options)
      else:
        div_BT = loss_refs.chunked_token_divergence(h, w, teacher, chunk_size=chunk_size, **options)
      return (div_BT * cot_BT).sum()

    return jax.value_and_grad(loss, argnums=(0, 1))(h, w)

  want_value, want_grads = value_and_grads(hidden_BTD, lm_head_DV)
  assert np.isfinite(want_value)
  for chunk_size in (3, 5, 16):  # 3 does not divide T = 10; 16 exceeds it
    value, grads = value_and_grads(hidden_BTD, lm_head_DV, chunk_size=chunk_size)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # A tied head is passed as the embedding [V, D] ("vd"): same values, its gradient transposed.
  loss_vd = lambda h, w: (loss_refs.chunked_token_divergence(h, w, teacher, chunk_size=3, head_axes="vd", **options)
                          * cot_BT).sum()
  value, (grad_h, grad_VD) = jit(jax.value_and_grad(loss_vd, argnums=(0, 1)))(hidden_BTD, lm_head_DV.T)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  np.testing.assert_allclose(grad_h, want_grads[0], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad_VD.T, want_grads[1], rtol=1e-4, atol=1e-6)


def test_chunked_bf16_head_accumulates_in_float32():
  hidden_BTD, lm_head_DV, teacher_BTV, teacher = hidden_case(10)
  head_DV, hidden_BTD = lm_head_DV.astype(jnp.bfloat16), hidden_BTD.astype(jnp.bfloat16)

  @jax.jit
  def divergence_and_head_grad(w):
    def total(w):
      div_BT = loss_refs.chunked_token_divergence(hidden_BTD, w, teacher, kind="fkl", chunk_size=4)
      return div_BT.sum(), div_BT

    return jax.grad(total, has_aux=True)(w)[::-1]

  div_BT, grad_DV = divergence_and_head_grad(head_DV)
  # bf16 products are exact in float32, so float32 accumulation matches float64 closely.
  logits_BTV = np.asarray(hidden_BTD, np.float64) @ np.asarray(head_DV, np.float64)
  np.testing.assert_allclose(div_BT, ref_sparse(teacher_BTV, logits_BTV, np.asarray(teacher.ids_BTK), "fkl"), **TOL)
  assert grad_DV.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad_DV, np.float32)))


def test_chunked_never_holds_all_logits():
  B, T, D, V, K, C = 1, 512, 16, 2048, 8, 64
  shape = jax.ShapeDtypeStruct
  teacher = losses.TeacherSignal(shape((B, T, K), jnp.int32), shape((B, T, K), F32), shape((B, T), F32))

  def grad_fn(h, w, teacher):
    return loss_refs.chunked_token_divergence(h, w, teacher, kind="fkl", chunk_size=C).sum()

  grads = jit(jax.grad(grad_fn, argnums=(0, 1)))
  compiled = grads.lower(shape((B, T, D), F32), shape((D, V), F32), teacher).compile()
  # Forward and backward together stay well below one [B, T, V] float32 logits array.
  assert compiled.memory_analysis().temp_size_in_bytes < 0.75 * B * T * V * 4
