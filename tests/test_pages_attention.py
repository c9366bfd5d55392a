"""Paged decode attention: the arguments the sampler hands ragged paged attention, checked against
numpy float64 attention over each row's own keys; and which reader a platform gets.

The Pallas kernel itself does not run on CPU in jax 0.10.2 (no interpret mode for its VMEM ref
reshape), so here `ref_ragged_paged_attention`, the JAX authors' reference of its semantics,
stands in for it; the kernel is compiled for TPU by aot_check (launch/README.md)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa

from paced_jax.model.config import ModelConfig, RopeConfig
from paced_jax.sampling import decoding


def ragged_reference(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, *, sm_scale, **blocks):
  """The kernel's reference, after the kernel's own static checks of the arguments and block sizes."""
  rpa.static_validate_inputs(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, sm_scale=sm_scale, **blocks)
  return rpa.ref_ragged_paged_attention(q, kv_pages, kv_lens, page_indices, cu_q_lens, num_seqs, sm_scale=sm_scale)


@pytest.mark.parametrize("T", [1, 3])
def test_ragged_arguments_equal_float64_attention(T):
  # GQA with a group of 3 (12 query heads on 4 kv heads), rows of ragged lengths over shuffled
  # pages, one row holding fewer pages than the table's width and one that writes nothing.
  H, J, Dh, Y, per_row = 12, 4, 128, 4, 5
  lens = np.array([T + 2, 17, 7, 20])
  B = len(lens)
  rng = np.random.default_rng(0)
  keys = [rng.standard_normal((L, J, Dh)) for L in lens]
  values = [rng.standard_normal((L, J, Dh)) for L in lens]
  q = rng.standard_normal((B, T, H, Dh))
  Q = B * per_row + 2
  order = rng.permutation(Q)
  table = np.full((B, per_row), Q, np.int32)   # Q: no page
  pool = rng.standard_normal((Q, Y, 2 * J, Dh))  # pages not held are noise
  for b, L in enumerate(lens):
    held = -(-L // Y)
    table[b, :held] = order[b * per_row:b * per_row + held]
    for s in range(L):
      pool[table[b, s // Y], s % Y, 0::2] = keys[b][s]
      pool[table[b, s // Y], s % Y, 1::2] = values[b][s]
  out = decoding._ragged_attention(jnp.asarray(q, jnp.float32), jnp.asarray(pool, jnp.float32), jnp.asarray(table),
                                   jnp.asarray(lens, jnp.int32), kernel=ragged_reference)
  G = H // J
  for b, L in enumerate(lens):
    for t in range(T):
      visible = L - T + t + 1  # the new tokens are the row's last T slots, each sees itself and before
      for h in range(H):
        s = keys[b][:visible, h // G] @ q[b, t, h] / np.sqrt(Dh)
        p = np.exp(s - s.max())
        want = (p / p.sum()) @ values[b][:visible, h // G]
        np.testing.assert_allclose(np.asarray(out[b, t, h]), want, rtol=1e-4, atol=1e-4)


def _model(heads: int, kv_heads: int, head_dim: int) -> ModelConfig:
  return ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=heads * head_dim, intermediate_size=64,
                     num_layers=1, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rms_norm_eps=1e-6,
                     rope=RopeConfig(), tie_word_embeddings=True, compute_dtype="bfloat16")


def test_paged_attention_resolution():
  qwen3 = _model(16, 8, 128)
  assert decoding.paged_attention("auto", qwen3, "tpu") == "ragged"
  assert decoding.paged_attention("auto", qwen3, "cpu") == "gather"
  assert decoding.paged_attention("gather", qwen3, "tpu") == "gather"
  smollm2 = _model(9, 3, 64)  # head_dim 64 and 3 kv heads: neither fits the kernel
  assert decoding.paged_attention("auto", smollm2, "tpu") == "gather"
  with pytest.raises(ValueError, match="paged_attention='ragged'"):
    decoding.paged_attention("ragged", qwen3, "cpu")
  with pytest.raises(ValueError, match="3 kv heads"):
    decoding.paged_attention("ragged", _model(9, 3, 128), "tpu")
