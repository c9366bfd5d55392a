"""The paged cache's host allocator against a brute-force model of who holds which pages."""

import numpy as np
import pytest

from paced_jax.sampling import pages


def _check(alloc, held, shards, per_shard, rows):
  """The table against the model: row r holds held[r] distinct pages of its own shard, listed
  first, the sentinel after them, and no page is held twice."""
  rows_per_shard = rows // shards
  for s in range(shards):
    owned = []
    for r in range(s * rows_per_shard, (s + 1) * rows_per_shard):
      entries = alloc.table[r]
      assert all(0 <= p < per_shard for p in entries[:held[r]])
      assert all(p == per_shard for p in entries[held[r]:])
      owned += list(entries[:held[r]])
    assert len(owned) == len(set(owned))
    assert alloc.free_pages(s) == per_shard - len(owned)


@pytest.mark.parametrize("seed", range(4))
def test_allocator_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  rows, shards, per_shard, page_size, per_row = 8, 2, 9, 3, 5
  alloc = pages.PageAllocator(rows, shards, per_shard, page_size, per_row)
  held = [0] * rows
  for _ in range(300):
    r = int(rng.integers(rows))
    if rng.random() < 0.25:
      alloc.release(r)
      held[r] = 0
    else:
      tokens = int(rng.integers(0, per_row * page_size + 1))
      want = -(-tokens // page_size)
      shard_rows = range(r // 4 * 4, r // 4 * 4 + 4)
      free = per_shard - sum(held[q] for q in shard_rows)
      ok = want <= held[r] or want - held[r] <= free
      assert alloc.reserve(r, tokens) == ok
      if ok:
        held[r] = max(held[r], want)
    _check(alloc, held, shards, per_shard, rows)


def test_allocator_refuses_a_pool_below_one_full_row():
  with pytest.raises(ValueError, match="full length"):
    pages.PageAllocator(4, 2, 4, 16, 5)


def test_top_up_evicts_the_least_advanced_row_of_the_shard():
  alloc = pages.PageAllocator(4, 2, 8, 1, 8)   # rows 0, 1 share shard 0; rows 2, 3 shard 1
  for r in range(4):
    assert alloc.reserve(r, 4)
  # Shard 0: row 1 is further along, so it is served first and row 0 makes room for it.
  # Shard 1: row 2 needs 2 more pages with none free; it is the least advanced, so it goes itself.
  evicted = pages.top_up(alloc, {0: 4, 1: 6, 2: 6, 3: 4}, {0: 3, 1: 9, 2: 1, 3: 5})
  assert evicted == [0, 2]
  assert list(alloc.held) == [0, 6, 0, 4]
  assert alloc.free_pages(0) == 2 and alloc.free_pages(1) == 4
