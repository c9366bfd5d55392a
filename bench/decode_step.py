"""One decode step of paced_jax's sampler in isolation: ms per step at several batch sizes.

Runs `sampler.decode_chunk` (forward of one token per row over a KV cache, logits, sampling)
on SmolLM2-135M-Instruct with every row active and the cache `--slots` long, so each step does
the same work; reports the fastest of `--repeats` chunks of `--steps` steps after one warmup
chunk (which includes compilation). The step that `bench/sampler.py` multiplies by the number
of decode steps, without prefill and scheduling around it.

  .venv/bin/python bench/decode_step.py --rows=1,16,64,128
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["1", "16", "64"], "decode rows (batch sizes) to time")
flags.DEFINE_integer("steps", 8, "decode steps per timed chunk")
flags.DEFINE_integer("repeats", 3, "timed chunks per batch size (the fastest is reported)")
flags.DEFINE_integer("slots", 192, "KV cache slots (prompt bucket + new tokens)")
flags.DEFINE_enum("kv_cache", "dense", ["dense", "paged"], "paged: every row holds pages for all its slots, read "
                  "through a window of all of them (the paged cache's worst case)")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp

  from bench import common
  from paced_jax.sampling import pages as pages_lib
  from paced_jax.sampling import sampler as sampler_lib

  cfg, _, params, mesh = common.load_paced(common.demo_model_dir())
  sampler = sampler_lib.Sampler(cfg, params, mesh, stop_ids=(), valid_vocab=cfg.vocab_size)
  print(f"# decode step, SmolLM2-135M float32, {FLAGS.kv_cache} cache {FLAGS.slots} slots, "
        f"{FLAGS.steps} steps per chunk; "
        f"jax {jax.__version__}, load average {common.load()}")
  rows_out = []
  for rows in map(int, FLAGS.rows):
    sc = sampler_lib.SamplingConfig(max_new_tokens=1 << 20, chunk_steps=FLAGS.steps, batch_rows=rows)
    window = 0
    if FLAGS.kv_cache == "paged":
      sc = dataclasses.replace(sc, kv_cache="paged")
      pages_per_row = FLAGS.slots // sc.page_size
      alloc = pages_lib.PageAllocator(rows, 1, rows * pages_per_row, sc.page_size, pages_per_row)
      for r in range(rows):
        alloc.reserve(r, FLAGS.slots)
      state = sampler.initial_state(rows, FLAGS.slots, sc, rows * pages_per_row)
      state = state._replace(cache=state.cache._replace(table_BQ=jnp.asarray(alloc.table)))
      window = FLAGS.slots
    else:
      state = sampler.initial_state(rows, FLAGS.slots, sc)
    # Every row active, writing from the middle of the cache: no row finishes inside a chunk.
    state = state._replace(active_B=jnp.ones((rows,), bool), next_slot_B=jnp.full((rows,), FLAGS.slots // 3, jnp.int32))
    times = []
    for i in range(FLAGS.repeats + 1):
      start = time.perf_counter()
      state = jax.block_until_ready(sampler_lib.decode_chunk(sampler.spec, sc.compiled_part(), window,
                                                             sampler.params, state))
      times.append(time.perf_counter() - start)
    step_ms = 1000 * min(times[1:]) / FLAGS.steps
    rows_out.append((rows, f"{times[0]:.1f}", f"{step_ms:.1f}", f"{rows * 1000 / step_ms:.0f}", common.load()))
    print(f"  rows={rows}: {step_ms:.1f} ms/step", flush=True)
  print(common.table(["rows", "first chunk s", "ms / step", "slot tok/s", "load average"], rows_out))


if __name__ == "__main__":
  app.run(main)
