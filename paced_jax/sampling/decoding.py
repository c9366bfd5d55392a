"""The decoder's forward for sampling: parameters in a decoding layout and a per-layer KV cache.

Axis legend: paced_jax's (B rows, T new tokens, S cache slots, J kv heads, Dh head dim, ...), plus
Q pages (of the page pool, or of one row's page table) and Y slots per page.

Training scans over layers stacked on a leading L axis (one compiled layer body). Decoding a
token reads every weight once for very little arithmetic, and there the scan costs: XLA:CPU
copies each layer's weight slice and cache slice out of the stacked arrays on every step
(measured on SmolLM2-135M: the MLPs of 30 layers at batch 1 take 36 ms scanned, 108 ms unrolled
over slices of the stacked weights, 17 ms over separate per-layer arrays). So the sampler keeps
its own copy of the weights with the layers unstacked (`decoding_params`), the output projection
stored as [D, V], and one cache array per layer; the loop over layers is unrolled.

Two caches. `KVCache` is dense: every row holds `S` slots whatever its length. `PagedKVCache`
holds a pool of fixed-size pages and a page table per row, so a row holds the pages its length
needs (the host allocator in pages.py hands them out); a decode step gathers each row's pages up
to a bucketed window and attends over that.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from paced_jax import mesh as mesh_lib
from paced_jax.model import attention as attention_lib, decoder as model_lib
from paced_jax.model.config import ModelConfig


class KVCache(NamedTuple):
  """Preallocated keys and values, one [B, J, S, Dh] array per layer (head-major: attention reads
  them as they are); `segment_ids_BS` is 0 on empty or padding slots."""
  k_BJSDh: tuple[jax.Array, ...]
  v_BJSDh: tuple[jax.Array, ...]
  segment_ids_BS: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> "KVCache":
    shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    per_layer = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return cls(per_layer(), per_layer(), jnp.zeros((batch, length), jnp.int32))


class PagedKVCache(NamedTuple):
  """Keys and values in a pool of pages, one [Q, Y, J, Dh] array per layer (a token's [J, Dh] block
  last: as [Q, J, Y, Dh], writing one token made the TPU compiler copy the pool). Slot s of row b lives
  in page `table_BQ[b, s // Y]` at offset s % Y. Rows and pages are split alike over the batch
  axes and a row's pages come from its own device's share, so table entries are indices into that
  share; an entry equal to the share's size is no page (writes there are dropped)."""
  k_QYJDh: tuple[jax.Array, ...]
  v_QYJDh: tuple[jax.Array, ...]
  table_BQ: jax.Array
  segment_ids_BS: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, pages: int, page_size: int, pages_per_row: int,
            shards: int) -> "PagedKVCache":
    shape = (pages, page_size, cfg.num_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    per_layer = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return cls(per_layer(), per_layer(), jnp.full((batch, pages_per_row), pages // shards, jnp.int32),
               jnp.zeros((batch, pages_per_row * page_size), jnp.int32))


def page_bytes(cfg: ModelConfig, page_size: int) -> int:
  """Bytes of one page across all layers, keys and values."""
  return 2 * cfg.num_layers * page_size * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.compute_dtype).itemsize


def _is_matrix(path) -> bool:
  # Norm weights stay in their own dtype: rms_norm multiplies in float32 (a bf16 copy would round them).
  return not any(getattr(k, "key", None) == "weight" for k in path)


@functools.partial(jax.jit, static_argnames="dtype")
def decoding_params(params: dict, dtype: str | None = None) -> dict:
  """The decoding layout of a decoder's parameters (a pure dict, as `nnx.to_pure_dict` gives):
  `{"embed_VD", "layers": [one dict per layer], "norm_D", "lm_head_DV"}`, a new copy of the
  weights, its matrices and biases in `dtype` (the compute dtype: the forward casts them to it
  anyway, so the copy is exact and each step reads half the bytes from bf16). Jitted, so the
  per-layer arrays keep the stacked arrays' shardings (minus the L axis)."""
  layers = params["layers"]
  L = jax.tree.leaves(layers)[0].shape[0]
  lm_head = params.get("lm_head")
  out = {
      "embed_VD": params["embed_tokens"],
      "layers": [jax.tree.map(lambda x: x[l], layers) for l in range(L)],
      "norm_D": params["norm"]["weight"],
      "lm_head_DV": params["embed_tokens"].T if lm_head is None else lm_head,
  }
  if dtype is None:
    return out
  return jax.tree_util.tree_map_with_path(lambda path, x: x.astype(dtype) if _is_matrix(path) else x, out)


def _without_batch_axes(entry):
  if isinstance(entry, tuple):
    return tuple(a for a in entry if a not in mesh_lib.BATCH_AXES) or None
  return None if entry in mesh_lib.BATCH_AXES else entry


def decoding_specs(param_specs: dict, num_layers: int) -> dict:
  """The PartitionSpecs of `decoding_params`' output, from those of its (stacked) input."""
  is_spec = lambda x: isinstance(x, P)
  layer = jax.tree.map(lambda s: P(*tuple(s)[1:]), param_specs["layers"], is_leaf=is_spec)
  embed = tuple(param_specs["embed_tokens"]) + (None,) * (2 - len(param_specs["embed_tokens"]))
  return {"embed_VD": param_specs["embed_tokens"], "layers": [layer] * num_layers,
          "norm_D": param_specs["norm"]["weight"], "lm_head_DV": param_specs.get("lm_head") or P(*embed[::-1])}


def decoding_shardings(specs: dict, mesh: Mesh, replicate_batch: bool) -> dict:
  """NamedShardings for decoding weights with PartitionSpecs `specs`: as they are, or without the
  batch axes when `replicate_batch`."""
  shard = lambda spec: NamedSharding(mesh, P(*(map(_without_batch_axes, spec) if replicate_batch else spec)))
  return jax.tree.map(shard, specs, is_leaf=lambda x: isinstance(x, P))


def _run_layers(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, mask_BTS, read=None, write=None):
  """The unrolled layers. `read(layer, x_BTD)` gives that layer's cache as layer_forward takes it
  (and x_BTD back); `write(layer, k, v)` turns what layer_forward returns into what is kept
  (default: as is)."""
  dtype = jnp.dtype(cfg.compute_dtype)
  x_BTD = jnp.take(params["embed_VD"], tokens_BT, axis=0).astype(dtype)
  inv_freq = model_lib.rope_inv_freq(cfg.rope, cfg.head_dim)
  keys, values = [], []
  for layer, p in enumerate(params["layers"]):
    cache = None
    if read is not None:
      cache, x_BTD = read(layer, x_BTD)
    x_BTD, k, v = model_lib.layer_forward(cfg, p, x_BTD, positions_BT, mask_BTS, inv_freq, cache)
    k, v = (k, v) if write is None else write(layer, k, v)
    keys.append(k)
    values.append(v)
  return model_lib.rms_norm(x_BTD, params["norm_D"], cfg.rms_norm_eps), tuple(keys), tuple(values)


def prefill(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT):
  """Forward over whole (left-padded) prompts with no cache.

  Returns (final hidden_BTD, keys, values): per layer [B, J, T, Dh], ready to be copied into
  slots 0..T-1 of a cache. Attention is over the T prompt slots only, not the whole cache.
  """
  B, T = tokens_BT.shape
  slots_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  mask_BTS = attention_lib.attention_mask(segment_ids_BT, slots_BT, segment_ids_BT, slots_BT)
  return _run_layers(cfg, params, tokens_BT, positions_BT, mask_BTS)


def _mask(segment_ids_BT, slots_BT, segments_BS):
  B, S = segments_BS.shape
  return attention_lib.attention_mask(segment_ids_BT, slots_BT, segments_BS,
                                  jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S)))


def extend(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT, cache: KVCache, cache_index_B):
  """Forward over T new tokens per row, written at slots cache_index_B[b] onwards; each attends to
  every earlier slot of its segment. Returns (final hidden_BTD, updated cache)."""
  slots_BT = cache_index_B[:, None] + jnp.arange(tokens_BT.shape[1], dtype=jnp.int32)
  segments_BS = model_lib.write_rows(cache.segment_ids_BS, segment_ids_BT, cache_index_B)
  read = lambda layer, x_BTD: ((cache.k_BJSDh[layer], cache.v_BJSDh[layer], slots_BT), x_BTD)
  mask_BTS = _mask(segment_ids_BT, slots_BT, segments_BS)
  hidden_BTD, keys, values = _run_layers(cfg, params, tokens_BT, positions_BT, mask_BTS, read)
  return hidden_BTD, KVCache(keys, values, segments_BS)


# ----------------------------------------------------------------------------- paged cache
# Page indices are local to a device's share of the pool, so reading and writing pages runs per
# device (shard_map over the batch axes): no page ever crosses devices.

def _per_device(mesh: Mesh, fn, *args):
  spec = P(mesh_lib.BATCH_AXES)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=spec)(*args)


def _gather_window(pool_QYJDh, table_BQ):
  """Each row's pages in table order, as a head-major [B, J, S, Dh] window (S = pages x Y)."""
  pages_BQYJDh = jnp.take(pool_QYJDh, table_BQ, axis=0, mode="clip")
  B, Q, Y, J, Dh = pages_BQYJDh.shape
  return pages_BQYJDh.reshape(B, Q * Y, J, Dh).transpose(0, 2, 1, 3)


def _write_slots(pool_QYJDh, new_BTJDh, table_BQ, slots_BT, write_B):
  """Write new entries at their rows' slots; rows with write_B False (and pages not held) write nothing."""
  Q, Y = pool_QYJDh.shape[:2]
  page_BT = jnp.take_along_axis(table_BQ, jnp.minimum(slots_BT // Y, table_BQ.shape[1] - 1), axis=1)
  page_BT = jnp.where(write_B[:, None], page_BT, Q)
  return pool_QYJDh.at[page_BT, slots_BT % Y].set(new_BTJDh.astype(pool_QYJDh.dtype), mode="drop")


def _write_tokens(pool_QYJDh, new_BTJDh, table_BQ, slots_BT, write_B):
  """`_write_slots` for a few tokens per row, one `dynamic_update_slice` per token: a scatter into
  the pool makes the TPU compiler copy pool-sized buffers."""
  Q, Y = pool_QYJDh.shape[:2]
  B, T = slots_BT.shape
  page_BT = jnp.take_along_axis(table_BQ, jnp.minimum(slots_BT // Y, table_BQ.shape[1] - 1), axis=1)
  keep_BT = write_B[:, None] & (page_BT < Q)

  def write(n, pool_QYJDh):
    b, t = n // T, n % T
    at = (jnp.minimum(page_BT[b, t], Q - 1), slots_BT[b, t] % Y, 0, 0)
    old_11JDh = jax.lax.dynamic_slice(pool_QYJDh, at, (1, 1) + pool_QYJDh.shape[2:])
    new_11JDh = jnp.where(keep_BT[b, t], new_BTJDh[b, t].astype(pool_QYJDh.dtype)[None, None], old_11JDh)
    return jax.lax.dynamic_update_slice(pool_QYJDh, new_11JDh, at)
  return jax.lax.fori_loop(0, B * T, write, pool_QYJDh)


def write_prompt_pages(mesh: Mesh, cache: PagedKVCache, keys, values, refill_B) -> PagedKVCache:
  """Copy prompt keys/values (per layer [B, J, W, Dh], slots 0..W-1) into the pages of the rows
  with refill_B set."""
  W = keys[0].shape[2]
  slots_BT = jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32), (refill_B.shape[0], W))

  def write(pool_QYJDh, new_BJWDh, table_BQ, slots_BT, refill_B):
    return _write_slots(pool_QYJDh, new_BJWDh.transpose(0, 2, 1, 3), table_BQ, slots_BT, refill_B)
  put = lambda pool, new: _per_device(mesh, write, pool, new, cache.table_BQ, slots_BT, refill_B)
  return cache._replace(k_QYJDh=tuple(map(put, cache.k_QYJDh, keys)), v_QYJDh=tuple(map(put, cache.v_QYJDh, values)))


def extend_paged(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT, cache: PagedKVCache,
                 cache_index_B, *, window: int, mesh: Mesh):
  """`extend` over a paged cache: attention reads each row's first `window` slots (whole pages;
  the caller picks a window past every row's next slot). New entries are written to the pages of
  rows whose segment_ids_BT are nonzero."""
  T = tokens_BT.shape[1]
  Y = cache.k_QYJDh[0].shape[1]
  slots_BT = cache_index_B[:, None] + jnp.arange(T, dtype=jnp.int32)
  segments_BS = model_lib.write_rows(cache.segment_ids_BS, segment_ids_BT, cache_index_B)
  table_BQ = cache.table_BQ[:, :window // Y]
  write_B = jnp.any(segment_ids_BT != 0, axis=1)

  def read(layer, x_BTD):
    # The barrier ties the gather to this layer's input: otherwise the compiler may gather every
    # layer's window up front (they depend on the pools and the table alone) and hold them all
    # at once. It holds the small table, not the pools (which would then be copied).
    x_BTD, layer_table_BQ = jax.lax.optimization_barrier((x_BTD, table_BQ))
    gather = lambda pool: _per_device(mesh, _gather_window, pool, layer_table_BQ)
    return (gather(cache.k_QYJDh[layer]), gather(cache.v_QYJDh[layer]), slots_BT), x_BTD
  take_new = jax.vmap(lambda w_JSDh, i: jax.lax.dynamic_slice_in_dim(w_JSDh, i, T, axis=1))

  def write(layer, k_BJSDh, v_BJSDh):
    put = lambda pool, w_BJSDh: _per_device(mesh, _write_tokens, pool,
                                            take_new(w_BJSDh, cache_index_B).transpose(0, 2, 1, 3),
                                            cache.table_BQ, slots_BT, write_B)
    return put(cache.k_QYJDh[layer], k_BJSDh), put(cache.v_QYJDh[layer], v_BJSDh)
  hidden_BTD, keys, values = _run_layers(cfg, params, tokens_BT, positions_BT,
                                         _mask(segment_ids_BT, slots_BT, segments_BS[:, :window]), read, write)
  return hidden_BTD, cache._replace(k_QYJDh=keys, v_QYJDh=values, segment_ids_BS=segments_BS)


def logits(params: dict, hidden_BTD) -> jax.Array:
  lm_head_DV = params["lm_head_DV"]
  return jnp.einsum("btd,dv->btv", hidden_BTD, lm_head_DV.astype(hidden_BTD.dtype),
                    preferred_element_type=jnp.float32)
