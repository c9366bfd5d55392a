"""The decoder's forward for sampling: parameters in a decoding layout and a per-layer KV cache.

Axis legend: paced_jax's (B rows, T new tokens, S cache slots, J kv heads, Dh head dim, ...), plus
Q pages (of the page pool, or of one row's page table), Y slots per page and Z = 2J interleaved keys
and values.

Training scans over layers stacked on a leading L axis (one compiled layer body). Decoding a
token reads every weight once for very little arithmetic, and there the scan costs: XLA:CPU
copies each layer's weight slice and cache slice out of the stacked arrays on every step
(measured on SmolLM2-135M: the MLPs of 30 layers at batch 1 take 36 ms scanned, 108 ms unrolled
over slices of the stacked weights, 17 ms over separate per-layer arrays). So the sampler keeps
its own copy of the weights with the layers unstacked (`decoding_params`), the output projection
stored as [D, V], and one cache array per layer; the loop over layers is unrolled.

Two caches. `KVCache` is dense: every row holds `S` slots whatever its length. `PagedKVCache`
holds a pool of fixed-size pages and a page table per row, so a row holds the pages its length
needs (the host allocator in pages.py hands them out); a decode step reads each row's pages with
ragged paged attention on TPU, elsewhere gathers them up to a bucketed window and attends over that.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import ragged_paged_attention as rpa
from jax.experimental.pallas.ops.tpu.ragged_paged_attention import kernel as rpa_kernel
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
  """Keys and values in a pool of pages, one [Q, Y, Z, Dh] array per layer with Z = 2J: a slot's
  keys and values interleaved over heads (key of kv head j at 2j, value at 2j + 1), the layout
  ragged paged attention reads, and a token's [Z, Dh] block last (as [Q, Z, Y, Dh], writing one
  token made the TPU compiler copy the pool). A row's sequence fills its slots from 0 (no left
  padding): slot s of row b lives in page `table_BQ[b, s // Y]` at offset s % Y. Rows and pages
  are split alike over the batch axes and a row's pages come from its own device's share, so
  table entries are indices into that share; an entry equal to the share's size is no page
  (writes there are dropped)."""
  kv_QYZDh: tuple[jax.Array, ...]
  table_BQ: jax.Array
  segment_ids_BS: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, pages: int, page_size: int, pages_per_row: int,
            shards: int) -> "PagedKVCache":
    shape = (pages, page_size, 2 * cfg.num_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    return cls(tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
               jnp.full((batch, pages_per_row), pages // shards, jnp.int32),
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


def _run_layers(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, mask_BTS, read=None, write=None,
                segment_ids_BT=None):
  """The unrolled layers. `read(layer, x_BTD)` gives that layer's cache as layer_forward takes it
  (and x_BTD back); `write(layer, k, v)` turns what layer_forward returns into what is kept
  (default: as is). With no cache, `segment_ids_BT` (instead of `mask_BTS`) runs attention
  through model/attention.py's entry point."""
  dtype = jnp.dtype(cfg.compute_dtype)
  x_BTD = jnp.take(params["embed_VD"], tokens_BT, axis=0).astype(dtype)
  inv_freq = model_lib.rope_inv_freq(cfg.rope, cfg.head_dim)
  keys, values = [], []
  for layer, p in enumerate(params["layers"]):
    cache = None
    if read is not None:
      cache, x_BTD = read(layer, x_BTD)
    x_BTD, k, v = model_lib.layer_forward(cfg, p, x_BTD, positions_BT, mask_BTS, inv_freq, cache, segment_ids_BT)
    k, v = (k, v) if write is None else write(layer, k, v)
    keys.append(k)
    values.append(v)
  return model_lib.rms_norm(x_BTD, params["norm_D"], cfg.rms_norm_eps), tuple(keys), tuple(values)


def prefill(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT):
  """Forward over whole (left-padded) prompts with no cache.

  Returns (final hidden_BTD, keys, values): per layer [B, J, T, Dh], ready to be copied into
  slots 0..T-1 of a cache. Attention is over the T prompt slots only, not the whole cache, by
  `cfg.attention` (dense, blockwise or a kernel by backend and length: model/attention.py).
  """
  return _run_layers(cfg, params, tokens_BT, positions_BT, None, segment_ids_BT=segment_ids_BT)


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

# Ragged paged attention's block sizes, passed explicitly: its tuned lookup calls jax.devices(),
# which names no TPU during an ahead-of-time compile here. Its untuned default is 128 pages and
# 32 queries per block; 512 kv tokens keep the double-buffered pages at 4 MiB of VMEM for
# Qwen3-1.7B's 8 kv heads in bf16.
RAGGED_KV_TOKENS_PER_BLOCK = 512
RAGGED_QUERIES_PER_BLOCK = 32


def _ragged_unsupported(cfg: ModelConfig, platform: str) -> str:
  """Why the ragged paged attention kernel cannot serve this model here ('' if it can)."""
  if platform != "tpu":
    return f"the ragged paged attention kernel is Pallas TPU only (platform {platform})"
  if cfg.head_dim % 128:
    return f"head_dim {cfg.head_dim} is not a multiple of 128 (the kernel's lane width)"
  dtype = jnp.dtype(cfg.compute_dtype)
  try:
    rpa_kernel.get_min_heads_per_blk(cfg.num_heads, 2 * cfg.num_kv_heads, dtype, dtype)
  except ValueError as e:  # e.g. SmolLM2's 3 kv heads: 6 interleaved heads do not tile
    return f"{cfg.num_kv_heads} kv heads: {e}"
  return ""


def paged_attention(impl: str, cfg: ModelConfig, platform: str) -> str:
  """How a paged decode step reads pages (SamplingConfig.paged_attention resolved): 'ragged'
  (Pallas TPU ragged paged attention over each row's pages up to its length) or 'gather' (each
  row's pages gathered into a window, then `attend`). auto: ragged where the kernel applies."""
  why = _ragged_unsupported(cfg, platform)
  if impl == "auto":
    return "gather" if why else "ragged"
  if impl == "ragged" and why:
    raise ValueError(f"sampling.paged_attention='ragged': {why}")
  return impl


def _per_device(mesh: Mesh, fn, *args, outputs: int = 1):
  spec = P(mesh_lib.BATCH_AXES)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * len(args), out_specs=(spec,) * outputs if outputs > 1 else spec,
                       check_vma=False)(*args)


def _interleave(k_BTJDh, v_BTJDh):
  """[B, T, 2J, Dh] with kv head j's key at 2j and value at 2j + 1."""
  B, T, J, Dh = k_BTJDh.shape
  return jnp.stack([k_BTJDh, v_BTJDh.astype(k_BTJDh.dtype)], axis=3).reshape(B, T, 2 * J, Dh)


def _gather_window(pool_QYZDh, table_BQ):
  """Each row's pages in table order, as head-major [B, J, S, Dh] keys and values (S = pages x Y)."""
  pages_BQYZDh = jnp.take(pool_QYZDh, table_BQ, axis=0, mode="clip")
  B, Q, Y, Z, Dh = pages_BQYZDh.shape
  window_BJSDh = pages_BQYZDh.reshape(B, Q * Y, Z, Dh).transpose(0, 2, 1, 3)
  return window_BJSDh[:, 0::2], window_BJSDh[:, 1::2]


def _ragged_attention(q_BTHDh, pool_QYZDh, table_BQ, kv_lens_B, *, kernel=None):
  """One device's attention of T new tokens per row over its rows' first kv_lens_B slots (the new
  tokens last), reading pages straight from the pool. `kernel` (tests) stands in for
  ragged_paged_attention: in jax 0.10.2 the kernel does not run in Pallas TPU interpret mode on
  CPU (it reshapes a VMEM ref, which the interpreter cannot index)."""
  B, T, H, Dh = q_BTHDh.shape
  Q, Y = pool_QYZDh.shape[:2]
  out_NHDh = (kernel or rpa.ragged_paged_attention)(
      q_BTHDh.reshape(B * T, H, Dh), pool_QYZDh, kv_lens_B.astype(jnp.int32), jnp.minimum(table_BQ, Q - 1),
      jnp.arange(B + 1, dtype=jnp.int32) * T, jnp.array([B], jnp.int32), sm_scale=1.0 / math.sqrt(Dh),
      num_kv_pages_per_block=max(1, min(table_BQ.shape[1], RAGGED_KV_TOKENS_PER_BLOCK // Y)),
      num_queries_per_block=min(B * T, RAGGED_QUERIES_PER_BLOCK))
  return out_NHDh.reshape(B, T, H, Dh)


def _write_slots(pool_QYZDh, new_BTZDh, table_BQ, slots_BT, write_B):
  """Write new entries at their rows' slots; rows with write_B False, negative slots and pages not
  held write nothing."""
  Q, Y = pool_QYZDh.shape[:2]
  page_BT = jnp.take_along_axis(table_BQ, jnp.clip(slots_BT // Y, 0, table_BQ.shape[1] - 1), axis=1)
  page_BT = jnp.where(write_B[:, None] & (slots_BT >= 0), page_BT, Q)
  return pool_QYZDh.at[page_BT, slots_BT % Y].set(new_BTZDh.astype(pool_QYZDh.dtype), mode="drop")


def _write_tokens(pool_QYZDh, new_BTZDh, table_BQ, slots_BT, write_B):
  """`_write_slots` for a few tokens per row, one `dynamic_update_slice` per token: a scatter into
  the pool makes the TPU compiler copy pool-sized buffers."""
  Q, Y = pool_QYZDh.shape[:2]
  B, T = slots_BT.shape
  page_BT = jnp.take_along_axis(table_BQ, jnp.minimum(slots_BT // Y, table_BQ.shape[1] - 1), axis=1)
  keep_BT = write_B[:, None] & (page_BT < Q)

  def write(n, pool_QYZDh):
    b, t = n // T, n % T
    at = (jnp.minimum(page_BT[b, t], Q - 1), slots_BT[b, t] % Y, 0, 0)
    old_11ZDh = jax.lax.dynamic_slice(pool_QYZDh, at, (1, 1) + pool_QYZDh.shape[2:])
    new_11ZDh = jnp.where(keep_BT[b, t], new_BTZDh[b, t].astype(pool_QYZDh.dtype)[None, None], old_11ZDh)
    return jax.lax.dynamic_update_slice(pool_QYZDh, new_11ZDh, at)
  return jax.lax.fori_loop(0, B * T, write, pool_QYZDh)


def write_prompt_pages(mesh: Mesh, cache: PagedKVCache, keys, values, refill_B, lens_B) -> PagedKVCache:
  """Copy prompt keys/values (per layer [B, J, W, Dh], left-padded: row b's prompt is its last
  lens_B[b] columns) into slots 0..lens_B[b]-1 of the rows with refill_B set."""

  def write(pool_QYZDh, k_BJWDh, v_BJWDh, table_BQ, refill_B, lens_B):
    W = k_BJWDh.shape[2]
    slots_BW = jnp.arange(W, dtype=jnp.int32)[None] - (W - lens_B)[:, None]
    new_BWZDh = _interleave(k_BJWDh.transpose(0, 2, 1, 3), v_BJWDh.transpose(0, 2, 1, 3))
    return _write_slots(pool_QYZDh, new_BWZDh, table_BQ, slots_BW, refill_B)
  put = lambda pool, k, v: _per_device(mesh, write, pool, k, v, cache.table_BQ, refill_B, lens_B)
  return cache._replace(kv_QYZDh=tuple(map(put, cache.kv_QYZDh, keys, values)))


def extend_paged(cfg: ModelConfig, params: dict, tokens_BT, positions_BT, segment_ids_BT, cache: PagedKVCache,
                 cache_index_B, *, window: int, mesh: Mesh, impl: str = "gather"):
  """`extend` over a paged cache. New entries are written to the pages of rows whose
  segment_ids_BT are nonzero; attention then reads, by `impl` (see `paged_attention`): 'ragged',
  each row's slots up to its new tokens, page by page; 'gather', each row's first `window` slots
  (whole pages; the caller picks a window past every row's next slot) gathered into a window."""
  T = tokens_BT.shape[1]
  Y = cache.kv_QYZDh[0].shape[1]
  slots_BT = cache_index_B[:, None] + jnp.arange(T, dtype=jnp.int32)
  segments_BS = model_lib.write_rows(cache.segment_ids_BS, segment_ids_BT, cache_index_B)
  write_B = jnp.any(segment_ids_BT != 0, axis=1)
  store = lambda layer, k_BTJDh, v_BTJDh: _per_device(mesh, _write_tokens, cache.kv_QYZDh[layer],
                                                      _interleave(k_BTJDh, v_BTJDh), cache.table_BQ, slots_BT, write_B)
  if impl == "ragged":
    # A row that writes nothing reads its first T slots (some page): its output is never used.
    kv_lens_B = jnp.where(write_B, cache_index_B + T, T)

    def read(layer, x_BTD):
      def attend_pages(q_BTHDh, k_BTJDh, v_BTJDh):
        pool_QYZDh = store(layer, k_BTJDh, v_BTJDh)
        return _per_device(mesh, _ragged_attention, q_BTHDh, pool_QYZDh, cache.table_BQ, kv_lens_B), pool_QYZDh, None
      return attend_pages, x_BTD
    write, mask_BTS = (lambda layer, pool_QYZDh, _: (pool_QYZDh, None)), None
  else:
    table_BQ = cache.table_BQ[:, :window // Y]

    def read(layer, x_BTD):
      # The barrier ties the gather to this layer's input: otherwise the compiler may gather every
      # layer's window up front (they depend on the pools and the table alone) and hold them all
      # at once. It holds the small table, not the pools (which would then be copied).
      x_BTD, layer_table_BQ = jax.lax.optimization_barrier((x_BTD, table_BQ))
      k_BJSDh, v_BJSDh = _per_device(mesh, _gather_window, cache.kv_QYZDh[layer], layer_table_BQ, outputs=2)
      return (k_BJSDh, v_BJSDh, slots_BT), x_BTD
    take_new = jax.vmap(lambda w_JSDh, i: jax.lax.dynamic_slice_in_dim(w_JSDh, i, T, axis=1))
    new = lambda w_BJSDh: take_new(w_BJSDh, cache_index_B).transpose(0, 2, 1, 3)
    write = lambda layer, k_BJSDh, v_BJSDh: (store(layer, new(k_BJSDh), new(v_BJSDh)), None)
    mask_BTS = _mask(segment_ids_BT, slots_BT, segments_BS[:, :window])
  hidden_BTD, pools, _ = _run_layers(cfg, params, tokens_BT, positions_BT, mask_BTS, read, write)
  return hidden_BTD, cache._replace(kv_QYZDh=pools, segment_ids_BS=segments_BS)


def logits(params: dict, hidden_BTD) -> jax.Array:
  lm_head_DV = params["lm_head_DV"]
  return jnp.einsum("btd,dv->btv", hidden_BTD, lm_head_DV.astype(hidden_BTD.dtype),
                    preferred_element_type=jnp.float32)
