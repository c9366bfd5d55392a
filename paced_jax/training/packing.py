"""Sequences (prompt + response + teacher signal) -> packed [B, T] rows of a train_step Batch.

Convention (shared with teacher_scoring.py): the distribution at position t predicts token t + 1,
so response token j of a sequence whose prompt has P tokens is trained at position P - 1 + j.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from paced_jax.training.train_step import Batch


@dataclasses.dataclass(frozen=True)
class Example:
  tokens: np.ndarray            # int32 [n]: prompt then response
  prompt_len: int
  teacher_ids: np.ndarray       # int32 [n - prompt_len, K]: signal for each response token
  teacher_logprobs: np.ndarray  # [n - prompt_len, K]
  teacher_tail: np.ndarray      # f32 [n - prompt_len]
  weight: float
  pass_bucket: int = 0


def truncate(ex: Example, seq_len: int) -> Example | None:
  """Cut a too-long sequence's response at seq_len tokens; None if not one response token fits."""
  if len(ex.tokens) <= seq_len:
    return ex
  keep = seq_len - ex.prompt_len
  if keep <= 0:
    return None
  return dataclasses.replace(ex, tokens=ex.tokens[:seq_len], teacher_ids=ex.teacher_ids[:keep],
                             teacher_logprobs=ex.teacher_logprobs[:keep], teacher_tail=ex.teacher_tail[:keep])


def pack(examples: Sequence[Example], rows: int, seq_len: int, top_k: int, pad_id: int = 0,
         logprob_dtype=np.float32) -> tuple[Batch, int]:
  """First-fit packing into `rows` rows of `seq_len`; returns (numpy Batch, sequences dropped)."""
  tokens = np.full((rows, seq_len), pad_id, np.int32)
  positions = np.zeros((rows, seq_len), np.int32)
  segments = np.zeros((rows, seq_len), np.int32)
  loss_mask = np.zeros((rows, seq_len), np.float32)
  weight = np.zeros((rows, seq_len), np.float32)
  bucket = np.zeros((rows, seq_len), np.int32)
  t_ids = np.zeros((rows, seq_len, top_k), np.int32)
  t_logprobs = np.zeros((rows, seq_len, top_k), logprob_dtype)
  t_tail = np.zeros((rows, seq_len), np.float32)
  fill = np.zeros(rows, np.int64)
  count = np.zeros(rows, np.int32)
  dropped = 0
  for ex in examples:
    ex = truncate(ex, seq_len)
    n = 0 if ex is None else len(ex.tokens)
    free = np.nonzero(fill + n <= seq_len)[0] if ex is not None else []
    if len(free) == 0:
      dropped += 1
      continue
    r = free[0]
    o, count[r] = fill[r], count[r] + 1
    span = slice(o, o + n)
    tokens[r, span], positions[r, span], segments[r, span] = ex.tokens, np.arange(n), count[r]
    weight[r, span], bucket[r, span] = ex.weight, ex.pass_bucket
    resp = slice(o + ex.prompt_len - 1, o + n - 1)  # predictions of response tokens 0 .. n-P-1
    loss_mask[r, resp] = 1.0
    t_ids[r, resp], t_logprobs[r, resp], t_tail[r, resp] = ex.teacher_ids, ex.teacher_logprobs, ex.teacher_tail
    fill[r] += n
  return Batch(tokens, positions, segments, loss_mask, weight, t_ids, t_logprobs, t_tail, bucket), dropped
