"""One Flax NNX decoder for the Llama 3, Qwen2 / Qwen2.5, Qwen3 and SmolLM2 families.

Axis legend (paced_jax/__init__.py): B batch, T query time, S key/cache time, D model dim, H query heads,
J kv heads, G query heads per kv head, Dh head dim, F MLP dim, V vocabulary rows, L layers.

The layers' parameters are stacked on a leading L axis and run under `lax.scan`, so a 36-layer
model compiles as fast as a 1-layer one. Parameters carry logical axis names (`logical_axes`
metadata) that `mesh.py` maps to mesh axes. Used functionally: callers `nnx.split` once and
`nnx.merge` inside jitted code.
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
from flax import nnx

from paced_jax.model import attention as attention_lib
from paced_jax.model.attention import attend
from paced_jax.model.config import ModelConfig, RopeConfig


def _param(rngs: nnx.Rngs | None, shape, axes, cfg: ModelConfig, init: str = "normal", **metadata) -> nnx.Param:
  dtype = jnp.dtype(cfg.param_dtype)
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
  return nnx.Param(value, logical_axes=axes, **metadata)


class Projection(nnx.Module):
  """A dense map `x @ kernel (+ bias)` whose kernel keeps heads as separate axes."""

  def __init__(self, shape, axes, cfg: ModelConfig, rngs: nnx.Rngs, bias: bool = False, bias_dims: int = 1,
               fan_in_dims: int = 1):
    # fan_in_dims: how many leading (after L) axes are inputs; checkpoint conversion needs it.
    self.kernel = _param(rngs, shape, axes, cfg, fan_in_dims=fan_in_dims)
    self.bias = _param(rngs, shape[:1] + shape[-bias_dims:], axes[:1] + axes[-bias_dims:], cfg, "zeros") if bias else None


class RMSNorm(nnx.Module):
  def __init__(self, shape, axes, cfg: ModelConfig):
    self.weight = _param(None, shape, axes, cfg, "ones")


def rms_norm(x, weight, eps: float):
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (weight.astype(jnp.float32) * x32).astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> jnp.ndarray:
  """Rotary frequencies, including Llama 3.1's piecewise long-context scaling."""
  inv_freq = 1.0 / (rope.theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if rope.kind == "linear":
    return inv_freq / rope.factor
  if rope.kind == "llama3":
    low_wavelen = rope.original_max_positions / rope.low_freq_factor
    high_wavelen = rope.original_max_positions / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)
  return inv_freq


def apply_rope(x_BTHDh, positions_BT, inv_freq):
  """Hugging Face's rotate-half convention: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
  angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angles_BTF)[:, :, None, :]
  sin = jnp.sin(angles_BTF)[:, :, None, :]
  x1, x2 = jnp.split(x_BTHDh.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTHDh.dtype)


def write_rows(cache_BS, new_BT, index_B):
  """Write each row's new entries at that row's own cache offset."""
  def write(c, x, i):
    return jax.lax.dynamic_update_slice(c, x, (i,) + (0,) * (c.ndim - 1))
  return jax.vmap(write)(cache_BS, new_BT.astype(cache_BS.dtype), index_B)


class DecoderLayers(nnx.Module):
  """All L decoder layers, parameters stacked on a leading L axis."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    L, D, H, J, Dh, F = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                         cfg.head_dim, cfg.intermediate_size)
    self.input_layernorm = RMSNorm((L, D), ("layers", "norm"), cfg)
    self.self_attn = nnx.Dict(
        q_proj=Projection((L, D, H, Dh), ("layers", "embed", "q_heads", "head_dim"), cfg, rngs, cfg.qkv_bias, 2),
        k_proj=Projection((L, D, J, Dh), ("layers", "embed", "kv_heads", "head_dim"), cfg, rngs, cfg.qkv_bias, 2),
        v_proj=Projection((L, D, J, Dh), ("layers", "embed", "kv_heads", "head_dim"), cfg, rngs, cfg.qkv_bias, 2),
        o_proj=Projection((L, H, Dh, D), ("layers", "q_heads", "head_dim", "embed"), cfg, rngs, cfg.o_bias, 1, 2),
    )
    if cfg.qk_norm:
      self.self_attn["q_norm"] = RMSNorm((L, Dh), ("layers", "head_dim"), cfg)
      self.self_attn["k_norm"] = RMSNorm((L, Dh), ("layers", "head_dim"), cfg)
    self.post_attention_layernorm = RMSNorm((L, D), ("layers", "norm"), cfg)
    self.mlp = nnx.Dict(
        gate_proj=Projection((L, D, F), ("layers", "embed", "mlp"), cfg, rngs, cfg.mlp_bias),
        up_proj=Projection((L, D, F), ("layers", "embed", "mlp"), cfg, rngs, cfg.mlp_bias),
        down_proj=Projection((L, F, D), ("layers", "mlp", "embed"), cfg, rngs, cfg.mlp_bias),
    )


def _project(p, eq: str, x, dtype):
  y = jnp.einsum(eq, x, p["kernel"].astype(dtype))
  if p.get("bias") is not None:
    y = y + p["bias"].astype(dtype)
  return y


def _scatter(cache_BJSDh, new_BTJDh, slots_BT):
  """Write one layer's new keys (or values) at each row's consecutive slots slots_BT[b, 0] onwards
  (which must lie inside the cache).

  One `dynamic_update_slice` per row (vmapped), with the update head-major like the cache: a
  scatter indexed by (row, slot) has its update laid out [B, T, J, Dh], and the TPU compiler then
  copies the whole cache into a new layout and back, every layer of every step.
  """
  new_BJTDh = new_BTJDh.transpose(0, 2, 1, 3).astype(cache_BJSDh.dtype)
  write = lambda c_JSDh, x_JTDh, s: jax.lax.dynamic_update_slice(c_JSDh, x_JTDh, (0, s, 0))
  return jax.vmap(write)(cache_BJSDh, new_BJTDh, slots_BT[:, 0])


@jax.custom_vjp
def gated_mlp(h_BTD, gate_DF, up_DF, down_FD):
  """down(silu(h @ gate) * (h @ up)), with a hand-written backward (see `_gated_mlp_bwd`)."""
  return _gated_mlp_fwd(h_BTD, gate_DF, up_DF, down_FD)[0]


def _gated_mlp_fwd(h_BTD, gate_DF, up_DF, down_FD):
  g_BTF = jnp.einsum("btd,df->btf", h_BTD, gate_DF)
  u_BTF = jnp.einsum("btd,df->btf", h_BTD, up_DF)
  y_BTD = jnp.einsum("btf,fd->btd", jax.nn.silu(g_BTF) * u_BTF, down_FD)
  return y_BTD, (h_BTD, g_BTF, u_BTF, gate_DF, up_DF, down_FD)


def _gated_mlp_bwd(res, dy_BTD):
  # Autodiff fuses the silu derivative into the transposes that feed the weight-gradient
  # matmuls, and XLA:CPU runs those transposing fusions about 10x slower than plain ones (a
  # third of a layer's backward). The barrier keeps the elementwise work in its own fusion.
  h_BTD, g_BTF, u_BTF, gate_DF, up_DF, down_FD = res
  sig_BTF = jax.nn.sigmoid(g_BTF)
  da_BTF = jnp.einsum("btd,fd->btf", dy_BTD, down_FD)
  a_BTF, dg_BTF, du_BTF = jax.lax.optimization_barrier(
      (g_BTF * sig_BTF * u_BTF, da_BTF * u_BTF * sig_BTF * (1 + g_BTF * (1 - sig_BTF)), da_BTF * g_BTF * sig_BTF))
  dh_BTD = jnp.einsum("btf,df->btd", dg_BTF, gate_DF) + jnp.einsum("btf,df->btd", du_BTF, up_DF)
  return (dh_BTD, jnp.einsum("btd,btf->df", h_BTD, dg_BTF), jnp.einsum("btd,btf->df", h_BTD, du_BTF),
          jnp.einsum("btf,btd->fd", a_BTF, dy_BTD))


gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


def layer_forward(cfg: ModelConfig, p, x_BTD, positions_BT, mask_BTS, inv_freq, kv_cache=None, segment_ids_BT=None):
  """One pre-norm decoder layer on plain arrays `p` (one layer's slice of the stacked state).

  With `segment_ids_BT` (and no cache) attention is causal self-attention within segments by
  `cfg.attention` (model/attention.py; `mask_BTS` is unused). Otherwise it runs `attend` under
  `mask_BTS`; with `kv_cache=(k_BJSDh, v_BJSDh, slots_BT)` (this layer's cache) the new
  keys/values are first written at `slots_BT` and attention runs over the whole cache. A callable
  `kv_cache(q_BTHDh, k_BTJDh, v_BTJDh) -> (out_BTHDh, k, v)` stores the new keys/values and attends
  itself (the sampler's paged cache). Returns (x, k, v): the updated cache, or without one this
  call's keys and values as [B, J, T, Dh].
  """
  dtype = jnp.dtype(cfg.compute_dtype)
  attn = p["self_attn"]
  h = rms_norm(x_BTD, p["input_layernorm"]["weight"], cfg.rms_norm_eps)
  q_BTHDh = _project(attn["q_proj"], "btd,dhk->bthk", h, dtype)
  k_BTJDh = _project(attn["k_proj"], "btd,dhk->bthk", h, dtype)
  v_BTJDh = _project(attn["v_proj"], "btd,dhk->bthk", h, dtype)
  if cfg.qk_norm:
    q_BTHDh = rms_norm(q_BTHDh, attn["q_norm"]["weight"], cfg.rms_norm_eps)
    k_BTJDh = rms_norm(k_BTJDh, attn["k_norm"]["weight"], cfg.rms_norm_eps)
  q_BTHDh = apply_rope(q_BTHDh, positions_BT, inv_freq)
  k_BTJDh = apply_rope(k_BTJDh, positions_BT, inv_freq)
  if callable(kv_cache):
    out_BTHDh, k_BJSDh, v_BJSDh = kv_cache(q_BTHDh, k_BTJDh, v_BTJDh)
  else:
    if kv_cache is not None:
      k_cache, v_cache, slots_BT = kv_cache
      k_BJSDh, v_BJSDh = _scatter(k_cache, k_BTJDh, slots_BT), _scatter(v_cache, v_BTJDh, slots_BT)
    else:
      k_BJSDh, v_BJSDh = k_BTJDh.transpose(0, 2, 1, 3), v_BTJDh.transpose(0, 2, 1, 3)
    if segment_ids_BT is not None and kv_cache is None:
      out_BTHDh = attention_lib.attention(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT, impl=cfg.attention)
    else:
      out_BTHDh = attend(q_BTHDh, k_BJSDh, v_BJSDh, mask_BTS, dtype)
  x_BTD = x_BTD + _project(attn["o_proj"], "bthk,hkd->btd", out_BTHDh, dtype)

  mlp = p["mlp"]
  h = rms_norm(x_BTD, p["post_attention_layernorm"]["weight"], cfg.rms_norm_eps)
  if mlp["gate_proj"].get("bias") is None:
    x_BTD = x_BTD + gated_mlp(h, *(mlp[n]["kernel"].astype(dtype) for n in ("gate_proj", "up_proj", "down_proj")))
  else:
    gate_BTF = _project(mlp["gate_proj"], "btd,df->btf", h, dtype)
    up_BTF = _project(mlp["up_proj"], "btd,df->btf", h, dtype)
    x_BTD = x_BTD + _project(mlp["down_proj"], "btf,fd->btd", jax.nn.silu(gate_BTF) * up_BTF, dtype)
  return x_BTD, k_BJSDh, v_BJSDh


class Decoder(nnx.Module):
  """Token ids -> final hidden states; `logits` maps them to the vocabulary."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
    self.layers = DecoderLayers(cfg, rngs)
    self.norm = RMSNorm((cfg.hidden_size,), ("norm",), cfg)
    self.lm_head = None if cfg.tie_word_embeddings else _param(
        rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)

  def output_head(self) -> tuple[jax.Array, str]:
    """(weights, their einsum axes): the output projection in compute dtype, as stored. Tied, it is
    the embedding itself, "vd": a transposed view is a [D, V] copy in every program that uses it,
    and its gradient another one transposed back (2 x 113 MB for SmolLM2's step)."""
    if self.lm_head is None:
      return self.embed_tokens[...].astype(self.cfg.compute_dtype), "vd"
    return self.lm_head[...].astype(self.cfg.compute_dtype), "dv"

  def __call__(self, tokens_BT, positions_BT, segment_ids_BT) -> jax.Array:
    """Final hidden states (after the final norm), [B, T, D].

    Rows may be packed: attention stays causal within equal nonzero segment ids, computed by
    `cfg.attention`. (Sampling runs the same layers over a KV cache through decoding.py.)
    """
    cfg = self.cfg
    x_BTD = jnp.take(self.embed_tokens[...], tokens_BT, axis=0).astype(cfg.compute_dtype)
    inv_freq = rope_inv_freq(cfg.rope, cfg.head_dim)

    def body(x_BTD, p):
      return layer_forward(cfg, p, x_BTD, positions_BT, None, inv_freq, segment_ids_BT=segment_ids_BT)[0], None
    if cfg.remat:
      body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    x_BTD, _ = jax.lax.scan(body, x_BTD, nnx.to_pure_dict(nnx.state(self.layers)))
    return rms_norm(x_BTD, self.norm.weight[...], cfg.rms_norm_eps)

  def logits(self, hidden_BTD) -> jax.Array:
    head, axes = self.output_head()
    return jnp.einsum(f"btd,{axes}->btv", hidden_BTD, head, preferred_element_type=jnp.float32)


def abstract_decoder(cfg: ModelConfig) -> Decoder:
  """The decoder with shape-only parameters (nothing allocated)."""
  return nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0)))


def init_decoder(cfg: ModelConfig, seed: int = 0) -> Decoder:
  return Decoder(cfg, nnx.Rngs(seed))


def positions_from_segments(segment_ids_BT) -> jax.Array:
  """Position of each token within its segment (0 for the first token), for packed rows."""
  T = segment_ids_BT.shape[1]
  idx_BT = jnp.broadcast_to(jnp.arange(T), segment_ids_BT.shape)
  starts_BT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BT[:, :1], bool), segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
  start_idx_BT = jax.lax.cummax(jnp.where(starts_BT, idx_BT, 0), axis=1)
  return (idx_BT - start_idx_BT).astype(jnp.int32)

