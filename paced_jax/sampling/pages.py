"""The host side of the paged KV cache: which pages each row holds, and who is evicted when a
device's share of the pool runs out.

Rows and pages are split alike over the batch-axis devices ("shards", in order: shard i holds rows
[i R/n, (i+1) R/n) and pages [i Q/n, (i+1) Q/n)), and a row only holds pages of its own shard, so
table entries are indices into that share. An entry equal to the share's size means no page.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


class PageAllocator:
  """Pages per row, topped up between decode chunks and returned when a row finishes or is evicted."""

  def __init__(self, rows: int, shards: int, pages_per_shard: int, page_size: int, pages_per_row: int):
    if rows % shards:
      raise ValueError(f"{rows} rows do not split over {shards} shards")
    if pages_per_shard < pages_per_row:
      raise ValueError(f"a shard's {pages_per_shard} pages cannot hold one row at full length ({pages_per_row} "
                       f"pages of {page_size} slots): raise the sampler's cache budget")
    self.rows_per_shard = rows // shards
    self.page_size = page_size
    self.pages_per_shard = pages_per_shard
    self.table = np.full((rows, pages_per_row), pages_per_shard, np.int32)
    self.held = np.zeros(rows, np.int64)
    self._free = [list(range(pages_per_shard - 1, -1, -1)) for _ in range(shards)]  # stacks: pop gives page 0 first

  def shard(self, row: int) -> int:
    return row // self.rows_per_shard

  def free_pages(self, shard: int) -> int:
    return len(self._free[shard])

  def pages_for(self, tokens: int) -> int:
    return -(-tokens // self.page_size)

  def reserve(self, row: int, tokens: int) -> bool:
    """Give `row` pages for its first `tokens` slots; False (and nothing changes) if its shard lacks them."""
    need = self.pages_for(tokens) - int(self.held[row])
    if need <= 0:
      return True
    free = self._free[self.shard(row)]
    if need > len(free):
      return False
    h = int(self.held[row])
    for j in range(h, h + need):
      self.table[row, j] = free.pop()
    self.held[row] = h + need
    return True

  def release(self, row: int) -> None:
    h = int(self.held[row])
    self._free[self.shard(row)].extend(int(p) for p in self.table[row, :h][::-1])
    self.table[row] = self.pages_per_shard
    self.held[row] = 0


def top_up(alloc: PageAllocator, needs: Mapping[int, int], progress: Mapping[int, int]) -> list[int]:
  """Reserve `needs[row]` slots for every row, evicting where a shard runs out; returns the evicted
  rows (their pages released). Rows further along (`progress`) are served first and the least
  advanced row of a shard is evicted first, so the work lost is small and the furthest row always
  finishes (a shard holds at least one row at full length)."""
  evicted: list[int] = []
  order = sorted(needs, key=lambda r: (-progress[r], r))
  for row in order:
    while row not in evicted and not alloc.reserve(row, needs[row]):
      same = [r for r in order if alloc.shard(r) == alloc.shard(row) and r not in evicted]
      victim = max(same, key=lambda r: (-progress[r], r))
      alloc.release(victim)
      evicted.append(victim)
  return evicted
