"""Stage boundaries: a finished stage's compiled programs are dropped (and recompiled when needed)."""

import jax
import jax.numpy as jnp
import numpy as np

from paced_jax import host_memory


def test_end_stage_drops_compiled_programs_and_a_later_call_recompiles():
  f = jax.jit(lambda x: jnp.cumsum(x * 2.0))
  x = np.arange(5, dtype=np.float32)
  np.testing.assert_array_equal(f(x), np.cumsum(x * 2.0))
  assert f._cache_size() == 1
  host_memory.end_stage()
  assert f._cache_size() == 0
  np.testing.assert_array_equal(f(x), np.cumsum(x * 2.0))
  assert f._cache_size() == 1
