"""The decoder's forward for sampling: parameters in a decoding layout and a per-layer KV cache.

Axis legend as in model.py (B batch, T new tokens, S cache slots, D model dim, K kv heads,
Dh head dim, V vocabulary rows, L layers).

Training scans over layers stacked on a leading L axis (one compiled layer body). Decoding a
token reads every weight once for very little arithmetic, and there the scan costs: XLA:CPU
copies each layer's weight slice and cache slice out of the stacked arrays on every step
(measured on SmolLM2-135M: the MLPs of 30 layers at batch 1 take 36 ms scanned, 108 ms unrolled
over slices of the stacked weights, 17 ms over separate per-layer arrays). So the sampler keeps
its own copy of the weights with the layers unstacked (`decoding_params`), the output projection
stored as [D, V], and one cache array per layer; the loop over layers is unrolled.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from paced_jax.model import decoder as model_lib
from paced_jax.model.config import ModelConfig


class KVCache(NamedTuple):
  """Preallocated keys and values, one [B, K, S, Dh] array per layer (head-major: attention reads
  them as they are); `segment_ids_BS` is 0 on empty or padding slots."""
  k_BKSDh: tuple[jax.Array, ...]
  v_BKSDh: tuple[jax.Array, ...]
  segment_ids_BS: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> "KVCache":
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    per_layer = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return cls(per_layer(), per_layer(), jnp.zeros((batch, length), jnp.int32))


@jax.jit
def decoding_params(params: dict) -> dict:
  """The decoding layout of a decoder's parameters (a pure dict, as `nnx.to_pure_dict` gives):
  `{"embed_VD", "layers": [one dict per layer], "norm_D", "lm_head_DV"}`, a new copy of the
  weights. Jitted, so the per-layer arrays keep the stacked arrays' shardings (minus the L axis)."""
  layers = params["layers"]
  L = jax.tree.leaves(layers)[0].shape[0]
  lm_head = params.get("lm_head")
  return {
      "embed_VD": params["embed_tokens"],
      "layers": [jax.tree.map(lambda x: x[l], layers) for l in range(L)],
      "norm_D": params["norm"]["weight"],
      "lm_head_DV": params["embed_tokens"].T if lm_head is None else lm_head,
  }


def _run_layers(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, mask_BTS, caches):
  dtype = jnp.dtype(cfg.compute_dtype)
  x_BTD = jnp.take(params["embed_VD"], tokens_BT, axis=0).astype(dtype)
  inv_freq = model_lib.rope_inv_freq(cfg.rope, cfg.head_dim)
  keys, values = [], []
  for layer, p in enumerate(params["layers"]):
    cache = None if caches is None else (caches[0][layer], caches[1][layer], caches[2])
    x_BTD, k, v = model_lib.layer_forward(cfg, p, x_BTD, positions_BT, mask_BTS, inv_freq, cache)
    keys.append(k)
    values.append(v)
  return model_lib.rms_norm(x_BTD, params["norm_D"], cfg.rms_norm_eps), tuple(keys), tuple(values)


def prefill(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT):
  """Forward over whole (left-padded) prompts with no cache.

  Returns (final hidden_BTD, keys, values): per layer [B, K, T, Dh], ready to be copied into
  slots 0..T-1 of a cache. Attention is over the T prompt slots only, not the whole cache.
  """
  B, T = tokens_BT.shape
  slots_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  mask_BTS = model_lib.attention_mask(segment_ids_BT, slots_BT, segment_ids_BT, slots_BT)
  return _run_layers(cfg, params, tokens_BT, positions_BT, mask_BTS, None)


def extend(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT, cache: KVCache, cache_index_B):
  """Forward over T new tokens per row, written at slots cache_index_B[b] onwards; each attends to
  every earlier slot of its segment. Returns (final hidden_BTD, updated cache)."""
  B, T = tokens_BT.shape
  slots_BT = cache_index_B[:, None] + jnp.arange(T, dtype=jnp.int32)
  segments_BS = model_lib.write_rows(cache.segment_ids_BS, segment_ids_BT, cache_index_B)
  S = segments_BS.shape[1]
  mask_BTS = model_lib.attention_mask(segment_ids_BT, slots_BT, segments_BS,
                                      jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S)))
  hidden_BTD, keys, values = _run_layers(cfg, params, tokens_BT, positions_BT, mask_BTS,
                                         (cache.k_BKSDh, cache.v_BKSDh, slots_BT))
  return hidden_BTD, KVCache(keys, values, segments_BS)


def logits(params: dict, hidden_BTD) -> jax.Array:
  lm_head_DV = params["lm_head_DV"]
  return jnp.einsum("btd,dv->btv", hidden_BTD, lm_head_DV.astype(hidden_BTD.dtype),
                    preferred_element_type=jnp.float32)
