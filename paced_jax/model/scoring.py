"""The teacher's top-k next-token signal: one jitted scorer, used offline (the store) and online.

Alignment convention: the distribution at position t predicts token t + 1. A teacher sequence
is `teacher_prompt + response` (P prompt tokens, n response tokens r_0..r_{n-1}); the
prediction of r_j sits at teacher position P - 1 + j, so the response's predictions are the
positions P - 1 .. P + n - 2. The student's prediction of the same r_j sits at its own
position len(student_prompt) - 1 + j; signal row j of a sequence pairs with it. The teacher is
fed only `prompt + response[:-1]` (P + n - 1 tokens): nothing predicts past the last token.

Axis letters as in paced_jax/__init__.py: B rows, T positions, C chunk of T, D model dim, V vocabulary rows, K top-k;
n response tokens of one sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from paced_jax import mesh as mesh_lib
from paced_jax.model import packing as row_packing

F32 = jnp.float32


class TeacherScores(NamedTuple):
  """The teacher's next-token distribution at every position, in top-k + tail form."""

  ids_BTK: jax.Array  # int32 top-k token ids, most likely first, all < valid_vocab
  logprobs_BTK: jax.Array  # f32 log-probs under the full (temperature-scaled) softmax
  tail_BT: jax.Array  # f32 mass outside the top-k, summed directly (never 1 - sum, see below)
  target_logprob_BT: jax.Array  # f32 log-prob of the realised next token `targets_BT`


def _score_chunk(hidden_BCD, targets_BC, head, head_axes: str, *, k: int, valid_vocab: int, temperature: float):
  logits_BCV = jnp.einsum(f"bcd,{head_axes}->bcv", hidden_BCD, head, preferred_element_type=F32) / temperature
  V = logits_BCV.shape[-1]
  if valid_vocab < V:  # padded embedding rows are no tokens: they get no probability
    logits_BCV = jnp.where(jnp.arange(V) < valid_vocab, logits_BCV, -jnp.inf)
  logp_BCV = jax.nn.log_softmax(logits_BCV, axis=-1)
  logp_BCK, ids_BCK = jax.lax.top_k(logp_BCV, k)
  # 1 - sum(top-k) cancels catastrophically in float32 (a tail of 1e-9 comes out 0 or 1e-7);
  # a sum of the small positive terms outside the top-k is exact to relative precision, is
  # never negative, and is exactly 0 when k covers every real token.
  outside_BCV = jnp.put_along_axis(jnp.exp(logp_BCV), ids_BCK, 0.0, axis=-1, inplace=False)
  target_BC1 = jnp.clip(targets_BC, 0, V - 1)[..., None]
  target_logprob_BC = jnp.take_along_axis(logp_BCV, target_BC1, axis=-1)[..., 0]
  return TeacherScores(ids_BCK.astype(jnp.int32), logp_BCK, outside_BCV.sum(-1), target_logprob_BC)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("k", "chunk_size", "valid_vocab", "temperature"))
def score(graphdef, params, tokens_BT, positions_BT, segment_ids_BT, targets_BT, *, k: int, chunk_size: int,
          valid_vocab: int, temperature: float = 1.0) -> TeacherScores:
  """Teacher forward, then top-k, tail and target log-prob, `chunk_size` positions at a time.

  Only one [B, C, V] float32 block of logits exists at once (`lax.map` over chunks of T). Ids
  >= `valid_vocab` (padded embedding rows) are masked out. Inputs may be sharded over the
  batch axes and `params` by their own shardings; XLA keeps the outputs batch-sharded.
  Positions of padding (segment 0) hold finite values that mean nothing.
  """
  model = nnx.merge(graphdef, params)
  V = model.cfg.vocab_size
  if not 0 < k <= valid_vocab <= V:
    raise ValueError(f"need 0 < k <= valid_vocab <= vocabulary rows, got k={k}, valid_vocab={valid_vocab}, rows={V}")
  hidden_BTD = model(tokens_BT, positions_BT, segment_ids_BT)
  head, head_axes = model.output_head()
  B, T, _ = hidden_BTD.shape
  C = min(chunk_size, T)
  num_chunks = -(-T // C)
  pad = num_chunks * C - T  # the last chunk is padded; its extra positions are dropped below

  def chunks(x):  # [B, T, ...] -> [num_chunks, B, C, ...]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(B, num_chunks, C, *x.shape[2:]), 1, 0)

  def one(chunk):
    return _score_chunk(*chunk, head, head_axes, k=k, valid_vocab=valid_vocab, temperature=temperature)

  out = jax.lax.map(one, (chunks(hidden_BTD), chunks(targets_BT)))
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(B, num_chunks * C, *x.shape[3:])[:, :T], out)


# ---------------------------------------------------------------------------------------------
# Host side: packing (prompt, response) pairs into rows, and unpacking each response's signal.


class Span(NamedTuple):
  """Where one sequence's response predictions sit: positions [start, stop) of `row`."""
  row: int
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class PackedBatch:
  """Teacher inputs, int32 [R, T], right-padded (segment 0, position 0), and one Span per sequence."""
  tokens_BT: np.ndarray
  positions_BT: np.ndarray
  segment_ids_BT: np.ndarray
  targets_BT: np.ndarray
  spans: tuple[Span, ...]


def pack_sequences(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *, length: int,
                   rows: int | None = None, pad_id: int = 0) -> PackedBatch:
  """Pack (teacher_prompt_ids, response_ids) pairs, in order, greedily into rows of `length`.

  A sequence goes into the current row if it fits, else starts the next row. `rows` pads the
  result to that many rows (an error if more are needed). A sequence with an empty response
  takes no room and gets an empty span.
  """
  fulls, prompt_lens = [], []
  for i, (prompt, response) in enumerate(sequences):
    prompt = np.asarray(prompt, np.int32).reshape(-1)
    response = np.asarray(response, np.int32).reshape(-1)
    if prompt.size == 0:
      raise ValueError(f"sequence {i}: empty teacher prompt; the first response token needs a context")
    if prompt.size + response.size - 1 > length and response.size:
      raise ValueError(f"sequence {i}: prompt {prompt.size} + response {response.size} tokens need "
                       f"{prompt.size + response.size - 1} positions, more than the row length {length}")
    fulls.append(np.concatenate([prompt, response]) if response.size else np.zeros(0, np.int32))
    prompt_lens.append(prompt.size)
  lengths = [max(full.size - 1, 0) for full in fulls]  # the last token is only a target
  slots = row_packing.place(lengths, length, in_order=True)
  needed = max((slot.row + 1 for slot in slots if slot), default=1)
  R = needed if rows is None else rows
  if needed > R:
    raise ValueError(f"{len(slots)} sequences need {needed} rows of {length} tokens, only {rows} allowed")
  positions, segments = row_packing.positions_and_segments(slots, lengths, R, length)
  tokens = np.full((R, length), pad_id, np.int32)
  targets = np.full((R, length), pad_id, np.int32)
  spans = []
  for full, p, n, slot in zip(fulls, prompt_lens, lengths, slots):
    if slot is None:  # an empty response takes no room
      spans.append(Span(0, 0, 0))
      continue
    tokens[slot.row, slot.start:slot.start + n], targets[slot.row, slot.start:slot.start + n] = full[:-1], full[1:]
    spans.append(Span(slot.row, slot.start + p - 1, slot.start + n))
  return PackedBatch(tokens, positions, segments, targets, tuple(spans))


def score_batches(graphdef, params, mesh: Mesh, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                  k: int, valid_vocab: int, length: int, batch_rows: int, chunk_size: int = 256,
                  temperature: float = 1.0, pad_id: int = 0) -> Iterator[list[tuple[int, dict[str, np.ndarray]]]]:
  """Score (teacher_prompt_ids, response_ids) pairs; yield, per batch, (sequence index, signal).

  Each signal is host numpy: ids int32 [n, k], logprobs f32 [n, k], tail f32 [n],
  target_logprob f32 [n]; row j predicts response token j. Sequences are packed in order
  into rows of `length`, `batch_rows` rows per batch (the last one padded with empty rows), so
  every batch has one shape and the scorer compiles once. Batches come in sequence order.
  """
  batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_rows % batch_ways:
    raise ValueError(f"batch_rows={batch_rows} is not divisible by the mesh's batch axes data*fsdp={batch_ways}")
  packed = pack_sequences(sequences, length=length, pad_id=pad_id)
  num_rows = packed.tokens_BT.shape[0]
  by_row: dict[int, list[int]] = {}
  empty = []
  for i, span in enumerate(packed.spans):
    (empty if span.stop == span.start else by_row.setdefault(span.row, [])).append(i)
  no_signal = {"ids": np.zeros((0, k), np.int32), "logprobs": np.zeros((0, k), np.float32),
               "tail": np.zeros((0,), np.float32), "target_logprob": np.zeros((0,), np.float32)}
  sharding = mesh_lib.batch_sharding(mesh, 2)

  def dispatch(first):  # jit calls return at once: the next batch computes while this one unpacks
    rows = range(first, min(first + batch_rows, num_rows))
    inputs = []
    for x in (packed.tokens_BT, packed.positions_BT, packed.segment_ids_BT, packed.targets_BT):
      block = np.zeros((batch_rows, length), np.int32)
      block[:len(rows)] = x[rows.start:rows.stop]
      inputs.append(mesh_lib.from_host(block, sharding))
    return rows, score(graphdef, params, *inputs, k=k, chunk_size=chunk_size, valid_vocab=valid_vocab,
                       temperature=temperature)

  next_empty = 0
  starts = list(range(0, num_rows, batch_rows))
  pending = dispatch(starts[0])
  for b in range(len(starts)):
    rows, out = pending
    if b + 1 < len(starts):
      pending = dispatch(starts[b + 1])
    ids, logprobs, tail, target = (mesh_lib.to_host(x) for x in out)
    results = []
    for r in rows:
      for i in by_row.get(r, ()):
        _, a, z = packed.spans[i]
        rb = r - rows.start
        results.append((i, {"ids": ids[rb, a:z], "logprobs": logprobs[rb, a:z], "tail": tail[rb, a:z],
                            "target_logprob": target[rb, a:z]}))
    # Empty responses have no row; each goes out with the first batch that passes its index.
    last = max((i for i, _ in results), default=-1)
    while next_empty < len(empty) and empty[next_empty] < last:
      results.append((empty[next_empty], dict(no_signal)))
      next_empty += 1
    yield sorted(results, key=lambda x: x[0])
  if next_empty < len(empty):
    yield [(i, dict(no_signal)) for i in empty[next_empty:]]
