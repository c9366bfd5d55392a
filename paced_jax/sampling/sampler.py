"""Jitted sampling with a preallocated KV cache and continuous batching, on the training mesh.

Axis letters as in paced_jax/__init__.py (B decode rows, S cache slots, V vocabulary, J KV heads, Q
pages, Y slots per page), with these local to this module: U distinct prompts being prefilled, R
refill rows (R = B), P a prompt bucket's length, N new tokens. Drawing a token from the logits is
token_draw.py's.

A fixed set of B rows decodes in one jitted `lax.while_loop` of up to `chunk_steps` steps. Between
chunks the host hands finished rows new prompts, prefilled in parallel straight into those rows
of the cache, so a finished sequence stops costing compute as soon as work is waiting. Every row
has its own cache write index, so rows at different lengths coexist. Each token's randomness
is `fold_in(seed, sequence key, step)`: the samples do not depend on batch size, row placement
or refill order, which makes interrupted stages resumable to the identical result, and lets
the paged cache evict a row when its device runs out of pages and sample it again from scratch
with the same tokens.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections import deque
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from paced_jax import mesh as mesh_lib, progress as progress_lib
from paced_jax.sampling import decoding
from paced_jax.sampling import pages as pages_lib
from paced_jax.sampling.token_draw import sample_tokens
from paced_jax.model.config import ModelConfig
from paced_jax.config import SamplingConfig


class Rollout(NamedTuple):
  prompt_index: int
  sample_index: int
  tokens: np.ndarray   # generated ids, including the stop token when one was hit
  finished: bool       # hit a stop id (False: cut at max_new_tokens)


class DecodeState(NamedTuple):
  cache: decoding.KVCache | decoding.PagedKVCache
  last_token_B: jax.Array     # next input token of each row
  next_pos_B: jax.Array       # its position within the sequence
  next_slot_B: jax.Array      # its cache slot
  gen_len_B: jax.Array        # tokens generated so far
  active_B: jax.Array         # row holds a sequence that is still generating
  seq_key_B: jax.Array        # sequence key (randomness) of the row's sequence
  out_BN: jax.Array           # generated tokens


@dataclasses.dataclass
class Work:
  """What `generate` computed, counted in row tokens (slots): every refilled row's first token,
  sampled by its prefill, and every row of every decode step, finished or not. Against the
  tokens kept, it prices the scheduling (bench/sampler.py). Accumulates over calls."""
  prefill_rows: int = 0   # rows refilled, each with its first token
  decode_steps: int = 0   # steps of all decode chunks
  slots: int = 0          # prefill_rows + rows x steps of each chunk


class DecodeSpec(NamedTuple):
  """What the jitted decode functions see of a sampler, as their static argument: hashable, and
  holding no weights (a jit cache keeps its static arguments alive; a whole Sampler there kept
  a copy of the model per compile). Samplers of one model share compiled code through it."""
  model_cfg: ModelConfig
  mesh: Mesh
  stop_ids: tuple[int, ...]
  valid_vocab: int


def paged_attention(spec: DecodeSpec, cfg: SamplingConfig) -> str:
  """How a paged decode step reads pages on the spec's platform ('ragged' or 'gather')."""
  return decoding.paged_attention(cfg.paged_attention, spec.model_cfg, spec.mesh.devices.flat[0].platform)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def prefill_rows(spec: DecodeSpec, cfg: SamplingConfig, params, state: DecodeState, tokens_UP, lens_U, rows_R, source_R,
                 keys_R):
  """Prefill U distinct prompts once, copy each into the rows that sample from it (`source_R`;
  R = B, `rows_R[r]` is r for a refilled row, B for one left alone) and sample every row's first token."""
  U, Pb = tokens_UP.shape
  R = rows_R.shape[0]
  S = state.cache.segment_ids_BS.shape[1]
  segments_UP = (jnp.arange(Pb)[None] >= (Pb - lens_U)[:, None]).astype(jnp.int32)
  positions_UP = jnp.maximum(jnp.cumsum(segments_UP, axis=1) - 1, 0)
  hidden_UPD, keys, values = decoding.prefill(spec.model_cfg, params, tokens_UP, positions_UP, segments_UP)
  logits_RV = decoding.logits(params, hidden_UPD[:, -1:])[:, 0][source_R]
  first_R = sample_tokens(logits_RV, keys_R, jnp.zeros((R,), jnp.int32), cfg, spec.valid_vocab)
  put = lambda big, new: big.at[rows_R].set(new, mode="drop")
  lens_R = lens_U[source_R]
  # A dense cache takes the left-padded prompt in slots 0..Pb-1, a paged one the prompt alone in
  # slots 0..len-1 (ragged paged attention reads every slot below a row's length); whatever a
  # row's earlier sequence left in later slots is masked (segment 0) until decoding overwrites it.
  paged = isinstance(state.cache, decoding.PagedKVCache)
  if paged:
    segments_RS = (jnp.arange(S)[None] < lens_R[:, None]).astype(jnp.int32)
  else:
    segments_RS = jnp.pad(segments_UP[source_R], ((0, 0), (0, S - Pb)))
  segments_BS = put(state.cache.segment_ids_BS, segments_RS)
  if paged:
    cache = decoding.write_prompt_pages(spec.mesh, state.cache._replace(segment_ids_BS=segments_BS),
                                        [k[source_R] for k in keys], [v[source_R] for v in values], rows_R < R,
                                        lens_R)
  else:
    put_prompt = lambda big_BJSDh, new_UJPDh: big_BJSDh.at[rows_R, :, :Pb].set(new_UJPDh[source_R], mode="drop")
    cache = decoding.KVCache(tuple(map(put_prompt, state.cache.k_BJSDh, keys)),
                             tuple(map(put_prompt, state.cache.v_BJSDh, values)), segments_BS)
  done_R = jnp.isin(first_R, jnp.asarray(spec.stop_ids, jnp.int32)) | (cfg.max_new_tokens <= 1)
  out_RN = jnp.zeros((R, cfg.max_new_tokens), jnp.int32).at[:, 0].set(first_R)
  return DecodeState(
      cache, put(state.last_token_B, first_R), put(state.next_pos_B, lens_R),
      put(state.next_slot_B, lens_R if paged else jnp.full((R,), Pb, jnp.int32)), put(state.gen_len_B, jnp.ones((R,), jnp.int32)),
      put(state.active_B, ~done_R), put(state.seq_key_B, keys_R), put(state.out_BN, out_RN))

@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def decode_chunk(spec: DecodeSpec, cfg: SamplingConfig, window: int, params, state: DecodeState) -> DecodeState:
  """Up to `chunk_steps` decode steps; stops early when no row is active. A paged cache is read
  by cfg.paged_attention: ragged reads each row's pages up to its length, gather each row's first
  `window` slots (past every row's slot at the end of the chunk)."""
  stop = jnp.asarray(spec.stop_ids, jnp.int32)
  B = state.last_token_B.shape[0]
  if isinstance(state.cache, decoding.PagedKVCache):
    extend = functools.partial(decoding.extend_paged, window=window, mesh=spec.mesh,
                               impl=paged_attention(spec, cfg))
  else:
    extend = decoding.extend

  def step(carry):
    i, s = carry
    hidden_B1D, cache = extend(spec.model_cfg, params, s.last_token_B[:, None], s.next_pos_B[:, None],
                               s.active_B[:, None].astype(jnp.int32), s.cache, s.next_slot_B)
    token_B = sample_tokens(decoding.logits(params, hidden_B1D)[:, 0], s.seq_key_B, s.gen_len_B, cfg,
                            spec.valid_vocab)
    write_B = s.active_B
    out_BN = s.out_BN.at[jnp.arange(B), jnp.where(write_B, s.gen_len_B, cfg.max_new_tokens)].set(
        token_B, mode="drop")
    gen_len_B = s.gen_len_B + write_B
    active_B = write_B & ~jnp.isin(token_B, stop) & (gen_len_B < cfg.max_new_tokens)
    return i + 1, DecodeState(cache, jnp.where(write_B, token_B, s.last_token_B), s.next_pos_B + write_B,
                              s.next_slot_B + write_B, gen_len_B, active_B, s.seq_key_B, out_BN)

  cond = lambda carry: (carry[0] < cfg.chunk_steps) & jnp.any(carry[1].active_B)
  return jax.lax.while_loop(cond, step, (jnp.int32(0), state))[1]


def prompt_bucket(length: int, cfg: SamplingConfig) -> int:
  """The prompt length a cache is sized and a prefill compiled for: the smallest of
  cfg.prompt_buckets that holds `length`, past the largest a multiple of 256 (few distinct shapes,
  so few compiles)."""
  i = bisect.bisect_left(cfg.prompt_buckets, length)
  return cfg.prompt_buckets[i] if i < len(cfg.prompt_buckets) else -(-length // 256) * 256


class Sampler:
  """Generates from one model on one mesh; compiled functions are cached per shape."""

  def __init__(self, model_cfg: ModelConfig, params, mesh: Mesh, *, stop_ids: Sequence[int],
               valid_vocab: int, pad_id: int = 0, replicate_weights: bool = False):
    """`params`: the decoder's weights (nnx.State or its pure dict; ShapeDtypeStructs with
    shardings give an abstract sampler, for ahead-of-time compiles). The sampler decodes from its
    own copy of them in the decoding layout (decoding.py), in the compute dtype: a second copy of
    the model (half its size in bf16 when the master weights are float32). `replicate_weights`
    keeps that copy whole on every batch-axis device (split over `tensor` only): a decode step then
    gathers no weights, at the cost of the copy's memory."""
    self.model_cfg = model_cfg
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    to_decoding = functools.partial(decoding.decoding_params, dtype=model_cfg.compute_dtype)
    spec = lambda x: x.sharding.spec
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(pure)):
      shapes = jax.eval_shape(to_decoding, pure)
      specs = decoding.decoding_specs(jax.tree.map(spec, pure), model_cfg.num_layers)
      self.params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                                 decoding.decoding_shardings(specs, mesh, replicate_weights))
    else:
      self.params = to_decoding(pure)
      if replicate_weights:
        specs = jax.tree.map(spec, self.params)
        self.params = jax.device_put(self.params, decoding.decoding_shardings(specs, mesh, True))
    self.mesh = mesh
    self.stop_ids = tuple(int(i) for i in stop_ids)
    self.valid_vocab = int(valid_vocab)
    self.pad_id = int(pad_id)
    self.row_multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    self.spec = DecodeSpec(model_cfg, mesh, self.stop_ids, self.valid_vocab)

  @classmethod
  def for_model(cls, model, params=None) -> "Sampler":
    """A sampler for a model.loaded.LoadedModel, from its own weights or `params` (a trained state)."""
    return cls(model.cfg, model.params if params is None else params, model.mesh, stop_ids=model.stop_ids,
               valid_vocab=model.valid_vocab, pad_id=model.pad_id)

  def _state_shardings(self, state: DecodeState):
    # Every leaf, cache included, has the rows as its leading axis.
    return jax.tree.map(lambda x: NamedSharding(self.mesh, P(mesh_lib.BATCH_AXES, *([None] * (x.ndim - 1)))), state)

  def rows(self, cfg: SamplingConfig, sequences: int) -> int:
    """Decode rows for `sequences` rollouts: rows_per_device (or batch_rows) on the batch axes."""
    want = cfg.rows_per_device * self.row_multiple if cfg.rows_per_device else cfg.batch_rows
    return -(-min(want, max(sequences, 1)) // self.row_multiple) * self.row_multiple

  def pages_per_device(self, cfg: SamplingConfig, rows: int, pages_per_row: int) -> int:
    """The page pool's share per batch-axis device: cfg.cache_gib of pages, at most what its rows
    need at full length."""
    full = rows // self.row_multiple * pages_per_row
    if not cfg.cache_gib:
      return full
    return min(full, int(cfg.cache_gib * (1 << 30)) // decoding.page_bytes(self.model_cfg, cfg.page_size))

  def paged_attention(self, cfg: SamplingConfig) -> str:
    """How a paged decode step reads pages on this mesh's platform ('ragged' or 'gather')."""
    return paged_attention(self.spec, cfg)

  def initial_state(self, rows: int, slots: int, cfg: SamplingConfig, pages: int = 0) -> DecodeState:
    """A state with a dense cache of `slots` slots per row, or with `pages` > 0 a paged cache
    (`pages` per batch-axis device, `slots` a multiple of cfg.page_size)."""
    state = self._zero_state(rows, slots, cfg, pages)
    return jax.device_put(state, self._state_shardings(state))

  def abstract_state(self, rows: int, slots: int, cfg: SamplingConfig, pages: int = 0) -> DecodeState:
    """`initial_state` as ShapeDtypeStructs with their shardings (nothing allocated)."""
    shapes = jax.eval_shape(lambda: self._zero_state(rows, slots, cfg, pages))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                        self._state_shardings(shapes))

  def _zero_state(self, rows: int, slots: int, cfg: SamplingConfig, pages: int) -> DecodeState:
    zeros = lambda: np.zeros((rows,), np.int32)  # distinct buffers: the state is donated
    if pages:
      cache = decoding.PagedKVCache.zeros(self.model_cfg, rows, pages * self.row_multiple, cfg.page_size,
                                          slots // cfg.page_size, self.row_multiple)
    else:
      cache = decoding.KVCache.zeros(self.model_cfg, rows, slots)
    return DecodeState(cache, zeros(), zeros(), zeros(), zeros(), np.zeros((rows,), bool), zeros(),
                       np.zeros((rows, cfg.max_new_tokens), np.int32))

  def generate(self, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, prompt_keys: Sequence[int] | None = None,
               progress: bool | str = True, prompt_len: int | None = None,
               work: Work | None = None) -> list[list[Rollout]]:
    """K = cfg.num_samples rollouts for each prompt, as `result[prompt][sample]`.

    `prompt_keys` (default: the prompt index) seed each prompt's samples; pass stable keys
    (e.g. derived from problem ids) to get the same samples however the prompts are batched.
    The cache holds the bucket of `prompt_len` (default: the longest of `prompts`) plus
    max_new_tokens, and a dense cache prefills every prompt at that bucket: a stage that samples
    its problems in chunks passes its longest prompt, so every chunk has the same shapes and
    compiles nothing new. `work`, when given, accumulates what the call computed.
    """
    K = cfg.num_samples
    keys = list(range(len(prompts))) if prompt_keys is None else [int(k) for k in prompt_keys]
    longest = max((len(p) for p in prompts), default=1)
    if prompt_len is not None and prompt_len < longest:
      raise ValueError(f"prompt_len {prompt_len} is shorter than the longest prompt ({longest} tokens)")
    bucket = prompt_bucket(prompt_len or longest, cfg)
    if bucket + cfg.max_new_tokens > self.model_cfg.max_position_embeddings:
      raise ValueError(f"prompt bucket {bucket} + max_new_tokens {cfg.max_new_tokens} exceeds the model's "
                       f"max_position_embeddings {self.model_cfg.max_position_embeddings}")
    total = len(prompts) * K
    rows = self.rows(cfg, total)
    queue = deque((i, k) for i in range(len(prompts)) for k in range(K))
    results: list[list[Rollout | None]] = [[None] * K for _ in prompts]
    owner: list[tuple[int, int] | None] = [None] * rows
    slots, alloc = bucket + cfg.max_new_tokens, None
    if cfg.kv_cache == "paged":
      pages_per_row = -(-slots // cfg.page_size)
      slots = pages_per_row * cfg.page_size
      alloc = pages_lib.PageAllocator(rows, self.row_multiple, self.pages_per_device(cfg, rows, pages_per_row),
                                      cfg.page_size, pages_per_row)
    state = self.initial_state(rows, slots, cfg, alloc.pages_per_shard if alloc else 0)
    bar = progress_lib.bar(total=total, desc=progress if isinstance(progress, str) else "sampling",
                           disable=not progress, unit="seq", leave=False)
    stop = set(self.stop_ids)
    put = lambda x: mesh_lib.from_host(x, mesh_lib.batch_sharding(self.mesh, x.ndim))
    active, gen_len, next_slot = np.zeros(rows, bool), np.zeros(rows, np.int32), np.zeros(rows, np.int32)
    window = 0
    while queue or active.any():
      if alloc is not None:
        # Pages for the coming chunk; a row that cannot get them goes back to the queue.
        live = [r for r in range(rows) if active[r]]
        evicted = pages_lib.top_up(alloc, {r: min(int(next_slot[r]) + cfg.chunk_steps, slots) for r in live},
                                   {r: int(gen_len[r]) for r in live})
        for r in evicted:
          queue.appendleft(owner[r])
          owner[r], active[r] = None, False
        if evicted:
          state = state._replace(active_B=put(active))
      free = [r for r in range(rows) if owner[r] is None]
      take = [(free[j], queue.popleft()) for j in range(min(len(free), len(queue)))]
      if take:
        # Dense: one prefill length, so the prefill compiles once per distinct-prompt count. Paged:
        # the refill's own bucket, so short prompts take only the pages they fill.
        Pb = bucket if alloc is None else prompt_bucket(max(len(prompts[i]) for _, (i, _) in take), cfg)
        if alloc is not None:
          refused = [(r, item) for r, item in take
                     if not alloc.reserve(r, min(len(prompts[item[0]]) + cfg.chunk_steps, slots))]
          queue.extendleft(item for _, item in reversed(refused))
          take = [t for t in take if t not in refused]
      if alloc is not None:
        state = state._replace(cache=state.cache._replace(table_BQ=put(alloc.table)))
        held = max(1, int(alloc.held.max()))
        # Ragged attention reads by length: one compiled chunk for every window.
        read_all = self.paged_attention(cfg) == "ragged"
        window = (alloc.table.shape[1] if read_all else min(1 << (held - 1).bit_length(), alloc.table.shape[1])) * cfg.page_size
      if take:
        state = self._refill(cfg, state, take, Pb, owner, prompts, keys)
        gen_len[[r for r, _ in take]] = 1  # as the prefill set them
      before = gen_len
      state = decode_chunk(self.spec, cfg.compiled_part(), window, self.params, state)
      active, gen_len, next_slot, out = (np.array(mesh_lib.to_host(x)) for x in (
          state.active_B, state.gen_len_B, state.next_slot_B, state.out_BN))
      if work is not None:
        # Rows only leave the active set inside a chunk: it ran as many steps as its longest-active
        # row generated tokens.
        steps = int(np.max(gen_len - before))
        work.prefill_rows += len(take)
        work.decode_steps += steps
        work.slots += len(take) + rows * steps
      for r in range(rows):
        if owner[r] is not None and not active[r]:
          i, k = owner[r]
          tokens = np.array(out[r, :gen_len[r]])
          results[i][k] = Rollout(i, k, tokens, bool(len(tokens) and int(tokens[-1]) in stop))
          owner[r] = None
          if alloc is not None:
            alloc.release(r)
          bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]

  def _refill(self, cfg, state, take, Pb, owner, prompts, keys):
    """Prefill the prompts of `take` ([(free row, (prompt, sample))]) into their rows. Samples of
    one prompt share a single prefill; the prompt count is padded to a power of two and the row
    count to all rows, so one compile serves every refill with the same number of distinct prompts
    and prompt bucket `Pb` (the rows only cost a copy)."""
    pad = lambda n: -(-(1 << (n - 1).bit_length()) // self.row_multiple) * self.row_multiple
    unique = list(dict.fromkeys(i for _, (i, _) in take))
    U, R = pad(len(unique)), len(owner)
    tokens = np.full((U, Pb), self.pad_id, np.int32)
    lens = np.ones(U, np.int32)
    for u, i in enumerate(unique):
      lens[u] = len(prompts[i])
      tokens[u, Pb - lens[u]:] = prompts[i]
    rows = np.full(R, R, np.int32)            # index R: the row is left alone
    source = np.zeros(R, np.int32)
    seq_keys = np.zeros(R, np.int32)
    where = {i: u for u, i in enumerate(unique)}
    for r, (i, k) in take:
      rows[r], source[r] = r, where[i]
      seq_keys[r] = (keys[i] * 1_000_003 + k) % (1 << 31)  # one stream per (prompt key, sample)
      owner[r] = (i, k)
    put = lambda x: mesh_lib.from_host(x, mesh_lib.batch_sharding(self.mesh, x.ndim))
    return prefill_rows(self.spec, cfg.compiled_part(), self.params, state,
                        *map(put, (tokens, lens, rows, source, seq_keys)))
