"""Decoding layout: prefill + cached extension equal the training forward, on every family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import mesh as mesh_lib
from paced_jax.sampling import decoding
from paced_jax.model import hf_checkpoint
from tiny_models import FAMILIES, make_tiny_model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
  directory = make_tiny_model(request.param, str(tmp_path_factory.mktemp(request.param)))
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), devices=jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(directory, mesh)
  return cfg, nnx.merge(graphdef, params), decoding.decoding_params(nnx.to_pure_dict(params))


def test_decoding_params_layout(tiny):
  cfg, model, dp = tiny
  assert len(dp["layers"]) == cfg.num_layers
  stacked = nnx.to_pure_dict(nnx.state(model.layers))
  for layer, p in enumerate(dp["layers"]):
    jax.tree.map(lambda s, x: np.testing.assert_array_equal(np.asarray(s)[layer], np.asarray(x)), stacked, p)
  head, axes = model.output_head()
  np.testing.assert_array_equal(np.asarray(dp["lm_head_DV"]), np.asarray(head if axes == "dv" else head.T))


def test_prefill_then_extend_equals_full_forward(tiny):
  """Left-padded prompts prefilled into a cache, then extended by a 3-token chunk and 4 single
  tokens per row at each row's own offset: every position's logits equal the training forward
  of the unpadded sequence (which itself matches transformers, test_model.py)."""
  cfg, model, dp = tiny
  rng = np.random.default_rng(0)
  lengths, P, S, extra = [5, 9, 2], 10, 24, 7
  seqs = [rng.integers(1, cfg.vocab_size, L + extra) for L in lengths]
  B = len(seqs)

  tokens = np.zeros((B, P), np.int32)
  segments = np.zeros((B, P), np.int32)
  for b, (L, seq) in enumerate(zip(lengths, seqs)):
    tokens[b, P - L:], segments[b, P - L:] = seq[:L], 1
  positions = np.maximum(np.cumsum(segments, 1) - 1, 0)
  hidden, keys, values = decoding.prefill(cfg, dp, tokens, positions, segments)
  got = {b: [np.asarray(decoding.logits(dp, hidden))[b, -1]] for b in range(B)}

  cache = decoding.KVCache.zeros(cfg, B, S)
  cache = decoding.KVCache(tuple(c.at[:, :, :P].set(k) for c, k in zip(cache.k_BJSDh, keys)),
                           tuple(c.at[:, :, :P].set(v) for c, v in zip(cache.v_BJSDh, values)),
                           cache.segment_ids_BS.at[:, :P].set(segments))
  step = jax.jit(lambda c, t, p, i: decoding.extend(cfg, dp, t, p, jnp.ones_like(t), c, i))
  done = 0
  for chunk in (3, 1, 1, 1, 1):
    t = np.stack([seq[L + done:L + done + chunk] for L, seq in zip(lengths, seqs)]).astype(np.int32)
    pos = np.asarray(lengths)[:, None] + done + np.arange(chunk)
    hidden, cache = step(cache, t, pos.astype(np.int32), np.full(B, P + done, np.int32))
    for b in range(B):
      got[b] += list(np.asarray(decoding.logits(dp, hidden))[b])
    done += chunk

  for b, (L, seq) in enumerate(zip(lengths, seqs)):
    full = seq[:L + done][None]
    want = np.asarray(model.logits(model(jnp.asarray(full), jnp.arange(full.shape[1])[None], jnp.ones_like(full))))
    np.testing.assert_allclose(np.stack(got[b]), want[0, L - 1:], atol=1e-4, rtol=1e-4)
