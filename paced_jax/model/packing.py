"""Packing variable-length sequences into rows of a fixed length: the one placement rule.

A packed row holds several sequences one after another; each gets a segment id (1, 2, ... within
its row; 0 = padding) and positions that restart at 0, so attention stays inside a sequence.
Training batches (training/packing.py) place first-fit into a fixed number of rows and drop what
does not fit; teacher scoring (model/scoring.py) places in order, so rows come out in sequence
order and can be streamed.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Slot(NamedTuple):
  """Where one sequence sits: positions [start, start + length) of `row`, as segment `segment`."""
  row: int
  start: int
  segment: int


def place(lengths: Sequence[int], row_len: int, *, rows: int | None = None,
          in_order: bool = False) -> list[Slot | None]:
  """A slot for each sequence, or None where it gets none (empty, longer than a row, or no room).

  First fit (default): the first row with room. `in_order`: the last row if it has room, else a
  new one, so sequence order is row order. `rows` caps the number of rows (None: as many as needed).
  """
  fill: list[int] = []
  count: list[int] = []
  slots: list[Slot | None] = []
  for n in lengths:
    if n <= 0 or n > row_len:
      slots.append(None)
      continue
    if in_order:
      r = len(fill) - 1 if fill and fill[-1] + n <= row_len else len(fill)
    else:
      r = next((i for i, f in enumerate(fill) if f + n <= row_len), len(fill))
    if r == len(fill):
      if rows is not None and r >= rows:
        slots.append(None)
        continue
      fill.append(0)
      count.append(0)
    count[r] += 1
    slots.append(Slot(r, fill[r], count[r]))
    fill[r] += n
  return slots


def positions_and_segments(slots: Sequence[Slot | None], lengths: Sequence[int], rows: int,
                           row_len: int) -> tuple[np.ndarray, np.ndarray]:
  """int32 positions [B, T] and segment ids [B, T] of placed sequences (padding: 0 and 0)."""
  positions_BT = np.zeros((rows, row_len), np.int32)
  segment_ids_BT = np.zeros((rows, row_len), np.int32)
  for slot, n in zip(slots, lengths):
    if slot is not None:
      positions_BT[slot.row, slot.start:slot.start + n] = np.arange(n)
      segment_ids_BT[slot.row, slot.start:slot.start + n] = slot.segment
  return positions_BT, segment_ids_BT
