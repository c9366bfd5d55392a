"""Sequences (prompt + response + teacher signal) -> packed [B, T] rows of a train_step Batch.

Convention (shared with model/scoring.py): the distribution at position t predicts token t + 1,
so response token j of a sequence whose prompt has P tokens is trained at position P - 1 + j.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from paced_jax.model import packing as row_packing
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
  examples = [truncate(ex, seq_len) for ex in examples]
  lengths = [0 if ex is None else len(ex.tokens) for ex in examples]
  slots = row_packing.place(lengths, seq_len, rows=rows)
  positions, segment_ids = row_packing.positions_and_segments(slots, lengths, rows, seq_len)
  b = Batch.zeros(rows, seq_len, top_k, teacher_logprobs=logprob_dtype)._replace(positions=positions,
                                                                                 segment_ids=segment_ids)
  b.tokens[:] = pad_id
  for ex, slot, n in zip(examples, slots, lengths):
    if slot is None:
      continue
    r, o, _ = slot
    b.tokens[r, o:o + n] = ex.tokens
    b.weight[r, o:o + n], b.pass_bucket[r, o:o + n] = ex.weight, ex.pass_bucket
    resp = slice(o + ex.prompt_len - 1, o + n - 1)  # predictions of response tokens 0 .. n-P-1
    b.loss_mask[r, resp] = 1.0
    b.teacher_ids[r, resp], b.teacher_logprobs[r, resp] = ex.teacher_ids, ex.teacher_logprobs
    b.teacher_tail[r, resp] = ex.teacher_tail
  return b, sum(slot is None for slot in slots)
