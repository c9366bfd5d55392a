"""One attention op, forward + backward, per implementation: seconds and compiled temporaries.

One row of T tokens (one causal sequence), 16 query heads / 8 kv heads / head_dim 128 (as
FINDINGS.md's TPU figures), loss = sum(out * w), gradients for q, k and v. For each T and
implementation: the compiled program's temporaries (`memory_analysis().temp_size_in_bytes`)
and the median of `--repeats` timed calls after a first (compiling) call, rounds interleaved;
ratios are against dense at the same T. Lengths above `--time_up_to` are compiled only (dense
at 16k needs 16 GiB of float32 scores per op). Implementations default to dense, blockwise,
and the backend's kernel where it has one (splash on TPU, the Pallas kernel on GPU).

  .venv/bin/python bench/attention.py --lengths=512,1024,2048,4096
  .venv/bin/python bench/attention.py --lengths=256,512,1024 --blocks=128,256,512
  .venv/bin/python bench/attention.py --lengths=512,1024,2048,4096,8192,16384 --time_up_to=0
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096"], "row lengths T")
flags.DEFINE_list("impls", [], "implementations (default: dense, blockwise and the backend's kernel)")
flags.DEFINE_integer("time_up_to", 4096, "time lengths up to this; longer ones are compiled only")
flags.DEFINE_integer("repeats", 3, "timed calls per implementation and length")
flags.DEFINE_integer("heads", 16, "query heads")
flags.DEFINE_integer("kv_heads", 8, "kv heads")
flags.DEFINE_integer("head_dim", 128, "head dim")
flags.DEFINE_list("blocks", [], "blockwise block sizes, each its own variant (default: attention.BLOCKWISE_BLOCK)")
flags.DEFINE_string("dtype", "float32", "q, k, v dtype")

GIB = float(1 << 30)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bench import common
  from paced_jax.model import attention as attention_lib

  kernel = {"tpu": ["splash"], "gpu": ["gpu"]}.get(jax.default_backend(), [])
  impls = FLAGS.impls or ["dense", "blockwise"] + kernel
  if "dense" not in impls:
    raise app.UsageError("--impls must include dense (the ratios' baseline)")
  blocks = [int(b) for b in FLAGS.blocks] or [attention_lib.BLOCKWISE_BLOCK]
  variants = []  # (label, impl, keyword arguments): one blockwise variant per block size
  for impl in impls:
    if impl == "blockwise":
      variants += [(f"blockwise/{b}" if len(blocks) > 1 else impl, impl, {"block": b}) for b in blocks]
    else:
      variants.append((impl, impl, {}))
  names = [v[0] for v in variants]
  H, J, Dh = FLAGS.heads, FLAGS.kv_heads, FLAGS.head_dim
  print(f"# attention fwd+bwd, one row, {H} heads / {J} kv heads / head_dim {Dh}, {FLAGS.dtype}, blockwise "
        f"block(s) {','.join(map(str, blocks))}; jax {jax.__version__} ({jax.default_backend()}), "
        f"load average {common.load()}", flush=True)
  rows = []
  for T in map(int, FLAGS.lengths):
    rng = np.random.default_rng(T)
    q, k, v, w = (jnp.asarray(rng.normal(size=(1, T, n, Dh)), FLAGS.dtype) for n in (H, J, J, H))
    seg = jnp.ones((1, T), jnp.int32)
    calls, temps = [], []
    for _, impl, kw in variants:
      # w and seg as arguments: closed over, XLA would constant-fold them into the program.
      loss = lambda q, k, v, w, seg, impl=impl, kw=kw: jnp.sum(
          (attention_lib.attention(q, k, v, seg, impl=impl, **kw) * w).astype(jnp.float32))
      compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(q, k, v, w, seg).compile()
      temps.append(compiled.memory_analysis().temp_size_in_bytes / GIB)
      calls.append(lambda c=compiled: jax.block_until_ready(c(q, k, v, w, seg)))
    seconds = [float("nan")] * len(variants)
    if T <= FLAGS.time_up_to:
      print(f"T={T}:", flush=True)
      _, timed, results = common.round_robin(calls, FLAGS.repeats, names)
      seconds = [common.median(t) for t in timed]
      ref = results[names.index("dense")]
      for name, res in zip(names, results):  # a wrong fast kernel would be no result
        err = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                  for a, b in zip(res[1], ref[1]))
        print(f"  {name}: max |grad - dense grad| = {err:.2e}", flush=True)
    d = names.index("dense")
    for name, s, m in zip(names, seconds, temps):
      rows.append((T, name, f"{s:.3f}", f"{s / seconds[d]:.2f}", f"{m:.3f}", f"{m / temps[d]:.3f}"))
  print(common.table(["T", "impl", "fwd+bwd s", "x dense", "temp GiB", "x dense"], rows))
  print(f"# load average at the end {common.load()}")


if __name__ == "__main__":
  app.run(main)
