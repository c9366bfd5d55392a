"""Jitted sampling with a preallocated KV cache and continuous batching, on the training mesh.

Axis legend: B decode rows, R rows being refilled, P prompt bucket, S cache slots, V vocabulary,
N new tokens.

A fixed set of B rows decodes in one jitted `lax.while_loop` of up to `chunk_steps` steps. Between
chunks the host hands finished rows new prompts, prefilled in parallel straight into those rows
of the cache, so a finished sequence stops costing compute as soon as work is waiting. Every row
has its own cache write index, so rows at different lengths coexist. Each token's randomness
is `fold_in(seed, sequence key, step)`: the samples do not depend on batch size, row placement
or refill order, which makes interrupted stages resumable to the identical result.
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
from tqdm.auto import tqdm

from paced_jax import mesh as mesh_lib
from paced_jax.model import KVCache
from paced_jax.model_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0              # 0 = no top-k
  greedy: bool = False
  max_new_tokens: int = 256
  num_samples: int = 8        # K samples per prompt
  batch_rows: int = 64        # rows decoding at once (rounded up to the batch-axis size)
  chunk_steps: int = 16       # decode steps between host refills
  prompt_buckets: tuple[int, ...] = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
  seed: int = 0

  def compiled_part(self) -> "SamplingConfig":
    """The settings the jitted functions see: host-only fields are normalised away, so stages
    that differ only in K, batching or buckets share compiled code."""
    return dataclasses.replace(self, num_samples=1, batch_rows=0, prompt_buckets=())

  def identity(self) -> dict:
    """The settings that determine the samples (batching and bucketing do not)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if k not in ("batch_rows", "chunk_steps", "prompt_buckets")}


class Rollout(NamedTuple):
  prompt_index: int
  sample_index: int
  tokens: np.ndarray   # generated ids, including the stop token when one was hit
  finished: bool       # hit a stop id (False: cut at max_new_tokens)


class DecodeState(NamedTuple):
  cache: KVCache
  last_token_B: jax.Array     # next input token of each row
  next_pos_B: jax.Array       # its position within the sequence
  next_slot_B: jax.Array      # its cache slot
  gen_len_B: jax.Array        # tokens generated so far
  active_B: jax.Array         # row holds a sequence that is still generating
  seq_key_B: jax.Array        # sequence key (randomness) of the row's sequence
  out_BN: jax.Array           # generated tokens


def filter_logits(logits_BV, cfg: SamplingConfig, valid_vocab: int):
  """Temperature, then top-k, then top-p (the order transformers applies them)."""
  V = logits_BV.shape[-1]
  logits_BV = jnp.where(jnp.arange(V) < valid_vocab, logits_BV.astype(jnp.float32), -jnp.inf)
  if cfg.greedy:
    return logits_BV
  logits_BV = logits_BV / cfg.temperature
  if cfg.top_k and cfg.top_k < V:
    kth_B1 = jax.lax.top_k(logits_BV, cfg.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if cfg.top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < top_p.
    keep_BV = mass_before_BV < cfg.top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return logits_BV


def sample_tokens(logits_BV, seq_key_B, step_B, cfg: SamplingConfig, valid_vocab: int):
  logits_BV = filter_logits(logits_BV, cfg, valid_vocab)
  if cfg.greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  base = jax.random.key(cfg.seed)
  keys = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.fold_in(base, s), t))(seq_key_B, step_B)
  return jax.vmap(jax.random.categorical)(keys, logits_BV).astype(jnp.int32)


class Sampler:
  """Generates from one model on one mesh; compiled functions are cached per shape."""

  def __init__(self, model_cfg: ModelConfig, graphdef, params, mesh: Mesh, *, stop_ids: Sequence[int],
               valid_vocab: int, pad_id: int = 0):
    self.model_cfg = model_cfg
    self.graphdef = graphdef
    # One pytree structure for loaded (nnx.State) and trained (pure dict) weights: the same
    # compiled prefill / decode then serve both.
    self.params = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    self.mesh = mesh
    self.stop_ids = tuple(int(i) for i in stop_ids)
    self.valid_vocab = int(valid_vocab)
    self.pad_id = int(pad_id)
    self.row_multiple = mesh.shape["data"] * mesh.shape["fsdp"]

  # The jitted methods take `self` as a static argument: samplers with equal static settings
  # (new params for the same model, say) share compiled code instead of recompiling.
  def _static_key(self):
    return (self.graphdef, self.model_cfg, self.mesh, self.stop_ids, self.valid_vocab, self.pad_id)

  def __hash__(self):
    return hash(self._static_key())

  def __eq__(self, other):
    return isinstance(other, Sampler) and self._static_key() == other._static_key()

  def _state_shardings(self, state: DecodeState):
    rows = mesh_lib.BATCH_AXES
    kv = NamedSharding(self.mesh, P(None, rows, None, None, None))
    return jax.tree.map(
        lambda x: kv if x.ndim == 5 else NamedSharding(self.mesh, P(rows, *([None] * (x.ndim - 1)))), state)

  def _initial_state(self, rows: int, slots: int, cfg: SamplingConfig) -> DecodeState:
    zeros = lambda: np.zeros((rows,), np.int32)  # distinct buffers: the state is donated
    state = DecodeState(KVCache.zeros(self.model_cfg, rows, slots), zeros(), zeros(), zeros(), zeros(),
                        np.zeros((rows,), bool), zeros(), np.zeros((rows, cfg.max_new_tokens), np.int32))
    return jax.device_put(state, self._state_shardings(state))

  @functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
  def _prefill(self, cfg: SamplingConfig, params, state: DecodeState, tokens_UP, lens_U, rows_R, source_R, keys_R):
    """Prefill U distinct prompts once, copy each into the rows `rows_R` (index B = skip) that
    sample from it (`source_R`), and sample every row's first token."""
    model = nnx.merge(self.graphdef, params)
    U, Pb = tokens_UP.shape
    R = rows_R.shape[0]
    S = state.cache.segment_ids_BS.shape[1]
    segments_UP = (jnp.arange(Pb)[None] >= (Pb - lens_U)[:, None]).astype(jnp.int32)
    positions_UP = jnp.maximum(jnp.cumsum(segments_UP, axis=1) - 1, 0)
    fresh = KVCache.zeros(self.model_cfg, U, S)
    hidden_UPD, fresh = model(tokens_UP, positions_UP, segments_UP, fresh, jnp.zeros((U,), jnp.int32))
    logits_RV = model.logits(hidden_UPD[:, -1:])[:, 0][source_R]
    first_R = sample_tokens(logits_RV, keys_R, jnp.zeros((R,), jnp.int32), cfg, self.valid_vocab)
    put = lambda big, new, axis=0: big.at[(slice(None),) * axis + (rows_R,)].set(new, mode="drop")
    cache = KVCache(put(state.cache.k_LBKSDh, fresh.k_LBKSDh[:, source_R], 1),
                    put(state.cache.v_LBKSDh, fresh.v_LBKSDh[:, source_R], 1),
                    put(state.cache.segment_ids_BS, fresh.segment_ids_BS[source_R]))
    lens_R = lens_U[source_R]
    done_R = jnp.isin(first_R, jnp.asarray(self.stop_ids, jnp.int32)) | (cfg.max_new_tokens <= 1)
    out_RN = jnp.zeros((R, cfg.max_new_tokens), jnp.int32).at[:, 0].set(first_R)
    return DecodeState(
        cache, put(state.last_token_B, first_R), put(state.next_pos_B, lens_R),
        put(state.next_slot_B, jnp.full((R,), Pb, jnp.int32)), put(state.gen_len_B, jnp.ones((R,), jnp.int32)),
        put(state.active_B, ~done_R), put(state.seq_key_B, keys_R), put(state.out_BN, out_RN))

  @functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
  def _decode_chunk(self, cfg: SamplingConfig, params, state: DecodeState) -> DecodeState:
    """Up to `chunk_steps` decode steps; stops early when no row is active."""
    model = nnx.merge(self.graphdef, params)
    stop = jnp.asarray(self.stop_ids, jnp.int32)
    B = state.last_token_B.shape[0]

    def step(carry):
      i, s = carry
      hidden_B1D, cache = model(s.last_token_B[:, None], s.next_pos_B[:, None],
                                s.active_B[:, None].astype(jnp.int32), s.cache, s.next_slot_B)
      token_B = sample_tokens(model.logits(hidden_B1D)[:, 0], s.seq_key_B, s.gen_len_B, cfg, self.valid_vocab)
      write_B = s.active_B
      out_BN = s.out_BN.at[jnp.arange(B), jnp.where(write_B, s.gen_len_B, cfg.max_new_tokens)].set(
          token_B, mode="drop")
      gen_len_B = s.gen_len_B + write_B
      active_B = write_B & ~jnp.isin(token_B, stop) & (gen_len_B < cfg.max_new_tokens)
      return i + 1, DecodeState(cache, jnp.where(write_B, token_B, s.last_token_B), s.next_pos_B + write_B,
                                s.next_slot_B + write_B, gen_len_B, active_B, s.seq_key_B, out_BN)

    cond = lambda carry: (carry[0] < cfg.chunk_steps) & jnp.any(carry[1].active_B)
    return jax.lax.while_loop(cond, step, (jnp.int32(0), state))[1]

  def generate(self, prompts: Sequence[Sequence[int]], cfg: SamplingConfig, *, prompt_keys: Sequence[int] | None = None,
               progress: bool | str = True) -> list[list[Rollout]]:
    """K = cfg.num_samples rollouts for each prompt, as `result[prompt][sample]`.

    `prompt_keys` (default: the prompt index) seed each prompt's samples; pass stable keys
    (e.g. derived from problem ids) to get the same samples however the prompts are batched.
    """
    K = cfg.num_samples
    keys = list(range(len(prompts))) if prompt_keys is None else [int(k) for k in prompt_keys]
    longest = max((len(p) for p in prompts), default=1)
    bucket = self._bucket(longest, cfg)
    if bucket + cfg.max_new_tokens > self.model_cfg.max_position_embeddings:
      raise ValueError(f"prompt bucket {bucket} + max_new_tokens {cfg.max_new_tokens} exceeds the model's "
                       f"max_position_embeddings {self.model_cfg.max_position_embeddings}")
    total = len(prompts) * K
    rows = -(-min(cfg.batch_rows, max(total, 1)) // self.row_multiple) * self.row_multiple
    queue = deque((i, k) for i in range(len(prompts)) for k in range(K))
    results: list[list[Rollout | None]] = [[None] * K for _ in prompts]
    owner: list[tuple[int, int] | None] = [None] * rows
    state = self._initial_state(rows, bucket + cfg.max_new_tokens, cfg)
    bar = tqdm(total=total, desc=progress if isinstance(progress, str) else "sampling", disable=not progress,
               unit="seq", leave=False)
    stop = set(self.stop_ids)
    active = np.zeros(rows, bool)
    while queue or active.any():
      free = [r for r in range(rows) if owner[r] is None]
      if queue and free:
        state = self._refill(cfg, state, free, queue, owner, prompts, keys)
      state = self._decode_chunk(cfg.compiled_part(), self.params, state)
      active, gen_len, out = map(mesh_lib.to_host, (state.active_B, state.gen_len_B, state.out_BN))
      for r in range(rows):
        if owner[r] is not None and not active[r]:
          i, k = owner[r]
          tokens = np.array(out[r, :gen_len[r]])
          results[i][k] = Rollout(i, k, tokens, bool(len(tokens) and int(tokens[-1]) in stop))
          owner[r] = None
          bar.update(1)
    bar.close()
    return results  # type: ignore[return-value]

  def _bucket(self, length: int, cfg: SamplingConfig) -> int:
    i = bisect.bisect_left(cfg.prompt_buckets, length)
    return cfg.prompt_buckets[i] if i < len(cfg.prompt_buckets) else -(-length // 256) * 256

  def _refill(self, cfg, state, free, queue, owner, prompts, keys):
    """Prefill waiting prompts into free rows. Samples of one prompt share a single prefill;
    row and prompt counts are padded to powers of two so compiles are reused."""
    take = [(free[j], queue.popleft()) for j in range(min(len(free), len(queue)))]
    pad = lambda n: -(-(1 << (n - 1).bit_length()) // self.row_multiple) * self.row_multiple
    unique = list(dict.fromkeys(i for _, (i, _) in take))
    U, R = pad(len(unique)), pad(len(take))
    Pb = self._bucket(max(len(prompts[i]) for i in unique), cfg)
    tokens = np.full((U, Pb), self.pad_id, np.int32)
    lens = np.ones(U, np.int32)
    for u, i in enumerate(unique):
      lens[u] = len(prompts[i])
      tokens[u, Pb - lens[u]:] = prompts[i]
    rows = np.full(R, len(owner), np.int32)            # index B: dropped by the scatter
    source = np.zeros(R, np.int32)
    seq_keys = np.zeros(R, np.int32)
    where = {i: u for u, i in enumerate(unique)}
    for j, (r, (i, k)) in enumerate(take):
      rows[j], source[j] = r, where[i]
      seq_keys[j] = (keys[i] * 1_000_003 + k) % (1 << 31)  # one stream per (prompt key, sample)
      owner[r] = (i, k)
    put = lambda x: mesh_lib.from_host(x, mesh_lib.batch_sharding(self.mesh, x.ndim))
    return self._prefill(cfg.compiled_part(), self.params, state, *map(put, (tokens, lens, rows, source, seq_keys)))
