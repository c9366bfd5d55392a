"""Host heap settings: glibc's malloc keeps freed memory of XLA's CPU buffers as resident pages.

On CPU every array, step temporary and decode cache is host memory from malloc. glibc gives each
thread that contends for the heap its own arena (up to 8 per core), and XLA's worker threads
allocate and free hundreds of MB per step: freed blocks stay resident in arenas no later
allocation of another thread reuses. The demo's train stage peaked at 6.2 GiB with the default
and 4.9 GiB with two arenas (issue 17). Elsewhere (macOS, musl) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

import jax

M_ARENA_MAX = -8   # mallopt parameter (glibc malloc.h)
ARENAS = 2


@functools.cache
def _glibc():
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # only glibc has it; mallopt elsewhere means other things or nothing
    return libc
  except (OSError, AttributeError):
    return None


def limit_arenas() -> None:
  """At most ARENAS malloc arenas for this process: call before jax starts its threads (the CLI entry)."""
  if (libc := _glibc()) is not None:
    libc.mallopt(M_ARENA_MAX, ARENAS)


def release_free() -> None:
  """Return the heap's free pages to the OS (malloc_trim): between stages, so a stage's peak is its own."""
  if (libc := _glibc()) is not None:
    libc.malloc_trim(0)


def end_stage() -> None:
  """Between pipeline stages: drop JAX's in-memory compile caches, then trim the heap.

  Each stage compiles its own programs (sampling configs, shapes and the train step differ), and the
  cached executables of finished stages held 0.56 GiB at the demo's train stage (issue 17). A later
  stage that needs one again recompiles it, from the persistent compilation cache where enabled."""
  gc.collect()  # sampler and model objects in reference cycles hold their arrays until collected
  jax.clear_caches()
  release_free()
