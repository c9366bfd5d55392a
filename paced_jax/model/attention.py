"""Causal self-attention over packed rows: one entry point, an implementation per backend.

A row holds several sequences told apart by segment ids (0 = padding); a query attends to the
keys of its own nonzero segment at or before its slot. `attention(..., impl=...)` picks:
  dense      [B, J, G*T, S] float32 scores (`attend`): the reference, and fastest for short rows
  blockwise  pure JAX, online softmax over key blocks, a custom VJP that recomputes each block
             from the saved log-sum-exp: O(T x block) memory; skips blocks above the diagonal
  splash     Pallas TPU splash attention, per device inside `jax.shard_map` (interpret mode on CPU)
  gpu        Pallas GPU flash attention with segment ids, per device likewise (tested here only in
             interpret mode)
  auto       TPU -> splash, GPU -> gpu, CPU -> dense below `CPU_BLOCKWISE_FROM` tokens, else blockwise
Outputs at padding queries mean nothing and differ by implementation (dense: a uniform average,
blockwise: zeros, the kernels: attention among the padding); no real query reads them.

Axis legend (paced_jax/__init__.py): B rows, T queries, S keys, H query heads, J kv heads,
G = H / J, Dh head dim; M = T * G query rows of one kv head (token-major: row m is token m // G).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from paced_jax import mesh as mesh_lib
from paced_jax.config import ATTENTION_IMPLEMENTATIONS as IMPLEMENTATIONS
# bench/attention.py on the 2-core CPU (bench/README.md): blockwise with 128-token blocks takes
# 1.4x dense's time at T = 256 and 0.25-0.35x from 512 to 4096 (256-token blocks: 0.28x at 4096).
CPU_BLOCKWISE_FROM = 512
BLOCKWISE_BLOCK = 128
KERNEL_BLOCKS = (512, 256, 128)  # splash's block: the largest dividing T (padded to a multiple of 128)
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so all-masked rows stay NaN-free


def attention_mask(q_segment_BT, q_slot_BT, k_segment_BS, k_slot_BS):
  """Causal within a segment; segment 0 (padding / empty cache) is never attended to."""
  same = q_segment_BT[:, :, None] == k_segment_BS[:, None, :]
  causal = k_slot_BS[:, None, :] <= q_slot_BT[:, :, None]
  return same & causal & (k_segment_BS[:, None, :] != 0)


def attend(q_BTHDh, k_BJSDh, v_BJSDh, mask_BTS, dtype):
  """Grouped-query softmax attention under a dense mask, computed head-major.

  The G query heads sharing a kv head are folded with the T queries into one M = G * T axis, so
  both products are plain batched matmuls over (B, J) with no operand transposes inside them
  (on XLA:CPU about 1.5x faster than contracting the token-major layout directly).
  """
  B, T, H, Dh = q_BTHDh.shape
  J, S = k_BJSDh.shape[1], k_BJSDh.shape[2]
  G = H // J
  q_BJMDh = q_BTHDh.reshape(B, T, J, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, J, G * T, Dh)
  k_BJSDh, v_BJSDh = k_BJSDh.astype(dtype), v_BJSDh.astype(dtype)
  # Decoding on CPU (a few query rows per kv head): XLA:CPU runs these B x J tiny matmuls far
  # below its matmul rate, and a fused multiply-and-reduce is faster inside the decode loop
  # (measured: a 64-row SmolLM2 decode step 334 -> 273 ms, batch 1 42 -> 34 ms).
  small = G * T <= 8 and jax.default_backend() == "cpu"
  if small:
    scores_BJMS = jnp.sum(q_BJMDh[:, :, :, None].astype(jnp.float32) * k_BJSDh[:, :, None].astype(jnp.float32), -1)
  else:
    scores_BJMS = jnp.einsum("bjmd,bjsd->bjms", q_BJMDh, k_BJSDh, preferred_element_type=jnp.float32)
  scores_BJGTS = jnp.where(mask_BTS[:, None, None], scores_BJMS.reshape(B, J, G, T, S) / math.sqrt(Dh), _MASKED)
  probs_BJMS = jax.nn.softmax(scores_BJGTS, axis=-1).astype(dtype).reshape(B, J, G * T, S)
  if small:
    out_BJMDh = jnp.sum(probs_BJMS[..., None] * v_BJSDh[:, :, None], axis=3)
  else:
    out_BJMDh = jnp.einsum("bjms,bjsd->bjmd", probs_BJMS, v_BJSDh)
  return out_BJMDh.reshape(B, J, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def platform() -> str:
  """Where the traced program will run: the context mesh's devices (a TPU topology during an
  ahead-of-time compile on this CPU), else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def resolve(impl: str, seq_len: int, backend: str | None = None) -> str:
  """The implementation `auto` stands for on `backend` (default: `platform()`) at this row length."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {impl!r}; available: {', '.join(IMPLEMENTATIONS)}")
  if impl != "auto":
    return impl
  backend = backend or platform()
  if backend == "tpu":
    return "splash"
  if backend in ("gpu", "cuda", "rocm"):
    return "gpu"
  return "dense" if seq_len < CPU_BLOCKWISE_FROM else "blockwise"


def attention(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT, *, impl: str = "auto", interpret: bool | None = None,
              block: int = BLOCKWISE_BLOCK) -> jax.Array:
  """Causal self-attention within segments; q, k, v token-major as the projections make them.

  Returns [B, T, H, Dh] in q's dtype. `interpret` runs the Pallas kernels in interpret mode
  (default: when the platform has no such kernel, i.e. on CPU); `block` is blockwise's block.
  """
  T = q_BTHDh.shape[1]
  impl = resolve(impl, T)
  if interpret is None:
    interpret = platform() == "cpu"
  if impl == "dense":
    slots_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), segment_ids_BT.shape)
    mask_BTS = attention_mask(segment_ids_BT, slots_BT, segment_ids_BT, slots_BT)
    return attend(q_BTHDh, k_BTJDh.transpose(0, 2, 1, 3), v_BTJDh.transpose(0, 2, 1, 3), mask_BTS, q_BTHDh.dtype)
  if impl == "blockwise":
    return blockwise_attention(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT, block=block)
  if impl == "splash":
    return _sharded(functools.partial(_splash_one_device, interpret=interpret), q_BTHDh, k_BTJDh, v_BTJDh,
                    segment_ids_BT)
  return _sharded(functools.partial(_gpu_one_device, interpret=interpret), q_BTHDh, k_BTJDh, v_BTJDh,
                  segment_ids_BT)


def _pad_rows(block: int, segment_ids_BT, *arrays_BT):
  """Pad T up to a multiple of `block` with padding tokens (segment 0, zero vectors)."""
  pad = -segment_ids_BT.shape[1] % block
  widths = lambda x: [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
  return [jnp.pad(x, widths(x)) for x in (segment_ids_BT, *arrays_BT)]


# ---- blockwise: online softmax, hand-written backward ------------------------------------------

def blockwise_attention(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT, *, block: int = BLOCKWISE_BLOCK):
  """`attention` by blocks of `block` queries and keys (T padded to a multiple of it)."""
  B, T, H, Dh = q_BTHDh.shape
  J = k_BTJDh.shape[2]
  G = H // J
  block = min(block, T)
  seg_BT, q_BTHDh, k_BTJDh, v_BTJDh = _pad_rows(block, segment_ids_BT, q_BTHDh, k_BTJDh, v_BTJDh)
  Tp = seg_BT.shape[1]
  q_BJMDh = q_BTHDh.reshape(B, Tp, J, G, Dh).transpose(0, 2, 1, 3, 4).reshape(B, J, Tp * G, Dh)
  out_BJMDh = _flash(q_BJMDh, k_BTJDh.transpose(0, 2, 1, 3), v_BTJDh.transpose(0, 2, 1, 3), seg_BT.astype(jnp.int32),
                     block, 1.0 / math.sqrt(Dh))
  out_BTHDh = out_BJMDh.reshape(B, J, Tp, G, Dh).transpose(0, 2, 1, 3, 4).reshape(B, Tp, H, Dh)
  return out_BTHDh[:, :T]


def _block_mask(seg_BT, i, j, block: int, G: int):
  """[B, 1, block * G, block]: query block i (rows t-major over G) against key block j."""
  q_seg_Bb = jax.lax.dynamic_slice_in_dim(seg_BT, i * block, block, axis=1)
  k_seg_Bb = jax.lax.dynamic_slice_in_dim(seg_BT, j * block, block, axis=1)
  causal_bb = j * block + jnp.arange(block)[None, :] <= i * block + jnp.arange(block)[:, None]
  mask_Bbb = (q_seg_Bb[:, :, None] == k_seg_Bb[:, None, :]) & (k_seg_Bb[:, None, :] != 0) & causal_bb
  return jnp.repeat(mask_Bbb, G, axis=1)[:, None]


def _slice(x, i, size: int, axis: int = 2):
  return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q_BJMDh, k_BJSDh, v_BJSDh, seg_BT, block: int, scale: float):
  return _flash_fwd(q_BJMDh, k_BJSDh, v_BJSDh, seg_BT, block, scale)[0]


def _flash_fwd(q_BJMDh, k_BJSDh, v_BJSDh, seg_BT, block, scale):
  B, J, M, Dh = q_BJMDh.shape
  n = seg_BT.shape[1] // block
  G = M // (n * block)
  rows = block * G

  def query_block(i):
    q_BJmDh = _slice(q_BJMDh, i, rows)

    def key_block(j, carry):
      m_BJm, l_BJm, acc_BJmDh = carry
      s_BJms = jnp.einsum("bjmd,bjsd->bjms", q_BJmDh, _slice(k_BJSDh, j, block),
                          preferred_element_type=jnp.float32) * scale
      mask = _block_mask(seg_BT, i, j, block, G)
      m_new = jnp.maximum(m_BJm, jnp.max(jnp.where(mask, s_BJms, _MASKED), axis=-1))
      p_BJms = jnp.where(mask, jnp.exp(s_BJms - m_new[..., None]), 0.0)
      alpha = jnp.exp(m_BJm - m_new)
      acc_BJmDh = alpha[..., None] * acc_BJmDh + jnp.einsum(
          "bjms,bjsd->bjmd", p_BJms.astype(v_BJSDh.dtype), _slice(v_BJSDh, j, block),
          preferred_element_type=jnp.float32)
      return m_new, alpha * l_BJm + p_BJms.sum(-1), acc_BJmDh

    init = (jnp.full((B, J, rows), _MASKED, jnp.float32), jnp.zeros((B, J, rows), jnp.float32),
            jnp.zeros((B, J, rows, Dh), jnp.float32))
    # Causal: key blocks after the query block hold nothing it may see.
    m_BJm, l_BJm, acc_BJmDh = jax.lax.fori_loop(0, i + 1, key_block, init)
    seen = l_BJm > 0  # padding queries see no key: output 0, and no gradient flows through them
    out_BJmDh = acc_BJmDh / jnp.where(seen, l_BJm, 1.0)[..., None]
    return out_BJmDh.astype(q_BJMDh.dtype), jnp.where(seen, m_BJm + jnp.log(jnp.where(seen, l_BJm, 1.0)), 0.0)

  out_nBJmDh, lse_nBJm = jax.lax.map(query_block, jnp.arange(n))
  out_BJMDh = jnp.moveaxis(out_nBJmDh, 0, 2).reshape(B, J, M, Dh)
  lse_BJM = jnp.moveaxis(lse_nBJm, 0, 2).reshape(B, J, M)
  return out_BJMDh, (q_BJMDh, k_BJSDh, v_BJSDh, seg_BT, out_BJMDh, lse_BJM)


def _flash_bwd(block, scale, res, dout_BJMDh):
  q_BJMDh, k_BJSDh, v_BJSDh, seg_BT, out_BJMDh, lse_BJM = res
  B, J, M, Dh = q_BJMDh.shape
  n = seg_BT.shape[1] // block
  G = M // (n * block)
  rows = block * G
  delta_BJM = jnp.sum(dout_BJMDh.astype(jnp.float32) * out_BJMDh.astype(jnp.float32), axis=-1)

  def key_block(dq_BJMDh, j):
    k_BJsDh, v_BJsDh = _slice(k_BJSDh, j, block), _slice(v_BJSDh, j, block)

    def query_block(i, carry):
      dq_BJMDh, dk_BJsDh, dv_BJsDh = carry
      q_BJmDh, do_BJmDh = _slice(q_BJMDh, i, rows), _slice(dout_BJMDh, i, rows)
      s_BJms = jnp.einsum("bjmd,bjsd->bjms", q_BJmDh, k_BJsDh, preferred_element_type=jnp.float32) * scale
      lse_BJm = _slice(lse_BJM, i, rows)
      p_BJms = jnp.where(_block_mask(seg_BT, i, j, block, G), jnp.exp(s_BJms - lse_BJm[..., None]), 0.0)
      dv_BJsDh += jnp.einsum("bjms,bjmd->bjsd", p_BJms.astype(do_BJmDh.dtype), do_BJmDh,
                             preferred_element_type=jnp.float32)
      dp_BJms = jnp.einsum("bjmd,bjsd->bjms", do_BJmDh, v_BJsDh, preferred_element_type=jnp.float32)
      ds_BJms = (p_BJms * (dp_BJms - _slice(delta_BJM, i, rows)[..., None]) * scale).astype(q_BJmDh.dtype)
      dk_BJsDh += jnp.einsum("bjms,bjmd->bjsd", ds_BJms, q_BJmDh, preferred_element_type=jnp.float32)
      dq_BJmDh = _slice(dq_BJMDh, i, rows) + jnp.einsum("bjms,bjsd->bjmd", ds_BJms, k_BJsDh,
                                                         preferred_element_type=jnp.float32)
      return jax.lax.dynamic_update_slice_in_dim(dq_BJMDh, dq_BJmDh, i * rows, axis=2), dk_BJsDh, dv_BJsDh

    zeros = jnp.zeros((B, J, block, Dh), jnp.float32)
    # Causal: only query blocks from this key block on see it.
    dq_BJMDh, dk_BJsDh, dv_BJsDh = jax.lax.fori_loop(j, n, query_block, (dq_BJMDh, zeros, zeros))
    return dq_BJMDh, (dk_BJsDh, dv_BJsDh)

  dq_BJMDh, (dk_nBJsDh, dv_nBJsDh) = jax.lax.scan(key_block, jnp.zeros((B, J, M, Dh), jnp.float32), jnp.arange(n))
  S = n * block
  dk_BJSDh = jnp.moveaxis(dk_nBJsDh, 0, 2).reshape(B, J, S, Dh)
  dv_BJSDh = jnp.moveaxis(dv_nBJsDh, 0, 2).reshape(B, J, S, Dh)
  return (dq_BJMDh.astype(q_BJMDh.dtype), dk_BJSDh.astype(k_BJSDh.dtype), dv_BJSDh.astype(v_BJSDh.dtype), None)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---- kernels: splash (TPU), Pallas GPU ---------------------------------------------------------

def kernel_block(seq_len: int) -> int:
  """The largest of KERNEL_BLOCKS dividing `seq_len` (callers pad T to a multiple of 128)."""
  return next(b for b in KERNEL_BLOCKS if seq_len % b == 0)


def _splash_one_device(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT, *, interpret: bool):
  _, T, H, Dh = q_BTHDh.shape
  seg_BT, q_BTHDh, k_BTJDh, v_BTJDh = _pad_rows(KERNEL_BLOCKS[-1], segment_ids_BT, q_BTHDh, k_BTJDh, v_BTJDh)
  Tp = seg_BT.shape[1]
  b = kernel_block(Tp)
  sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                            block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((Tp, Tp)) for _ in range(H)])
  # GQA natively: the kernel maps query head h to kv head h // (H / J). It does not scale q.
  kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
  seg_BT = seg_BT.astype(jnp.int32)
  out_BHTDh = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s)))(
      (q_BTHDh / math.sqrt(Dh)).astype(q_BTHDh.dtype).transpose(0, 2, 1, 3), k_BTJDh.transpose(0, 2, 1, 3),
      v_BTJDh.transpose(0, 2, 1, 3), seg_BT)
  return out_BHTDh.transpose(0, 2, 1, 3)[:, :T]


def _sharded(fn, q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT):
  """Run `fn` per device: batch over the batch mesh axes, heads over 'tensor' where they divide
  (each device then holds whole groups of G query heads with their kv head)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT)
  B, H, J = q_BTHDh.shape[0], q_BTHDh.shape[2], k_BTJDh.shape[2]
  batch = tuple(a for a in mesh_lib.BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  batch = batch if batch and B % math.prod(mesh.shape[a] for a in batch) == 0 else None
  tensor = mesh.shape.get("tensor", 1)
  heads = "tensor" if tensor > 1 and H % tensor == 0 and J % tensor == 0 else None
  qkv = P(batch, None, heads, None)
  return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch, None)), out_specs=qkv,
                       check_vma=False)(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT)


def _gpu_one_device(q_BTHDh, k_BTJDh, v_BTJDh, segment_ids_BT, *, interpret: bool):
  """Pallas GPU (Triton) flash attention, kv heads repeated to the query heads (no GPU here: its
  tests run the kernel in interpret mode, not the Triton lowering)."""
  _, T, H, Dh = q_BTHDh.shape
  G = H // k_BTJDh.shape[2]
  # Padded to 128 tokens: the kernel's default tiles (128 forward, 32 backward) then divide T.
  seg_BT, q_BTHDh, k_BTJDh, v_BTJDh = _pad_rows(KERNEL_BLOCKS[-1], segment_ids_BT, q_BTHDh, k_BTJDh, v_BTJDh)
  out_BTHDh = gpu_attention.mha(q_BTHDh, jnp.repeat(k_BTJDh, G, axis=2), jnp.repeat(v_BTJDh, G, axis=2),
                                seg_BT.astype(jnp.int32), sm_scale=1.0 / math.sqrt(Dh), causal=True,
                                block_sizes=gpu_attention.BlockSizes.get_default(), interpret=interpret)
  return out_BTHDh[:, :T]
