"""Forward (prefill) throughput: paced_jax's Decoder vs transformers + torch on the same weights.

Both run one full forward over a B x T batch of real chat-rendered tokens (problems packed
back to back into each row, so no padding) and produce the logits of every position, as a
training or scoring forward does. Reported: tokens/s of the median timed call; the first
(warmup / compile) call is excluded and printed separately.

  .venv/bin/python bench/forward.py --batch=8 --seq_len=256 --repeats=5 --dtypes=float32,bfloat16
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from bench import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "rows per forward")
flags.DEFINE_integer("seq_len", 256, "tokens per row")
flags.DEFINE_integer("repeats", 5, "timed calls per variant (median reported)")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "float32 and/or bfloat16")
flags.DEFINE_list("systems", ["paced_jax", "torch"], "which systems to run")


def packed_batch(model_dir: str, batch: int, seq_len: int) -> np.ndarray:
  """B x T ids: chat prompts concatenated until every row is full (real text, no padding)."""
  prompts = common.chat_prompts(model_dir, 200)
  stream = np.concatenate([np.asarray(p, np.int32) for p in prompts])
  need = batch * seq_len
  stream = np.tile(stream, -(-need // len(stream)))[:need]
  return stream.reshape(batch, seq_len)


def setup_paced(model_dir: str, tokens_BT: np.ndarray, compute_dtype: str, param_dtype: str):
  """A thunk running one blocking forward."""
  cfg, graphdef, params, _ = common.load_paced(model_dir, compute_dtype, param_dtype)

  @jax.jit
  def forward(params, tokens_BT):
    model = nnx.merge(graphdef, params)
    B, T = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    hidden_BTD = model(tokens_BT, positions_BT, jnp.ones((B, T), jnp.int32))
    return model.logits(hidden_BTD)

  tokens = jnp.asarray(tokens_BT)
  return lambda: forward(params, tokens).block_until_ready()


def setup_torch(model_dir: str, tokens_BT: np.ndarray, dtype: str, autocast: bool):
  import torch
  model = common.load_hf(model_dir, "float32" if autocast else dtype)
  tokens = torch.from_numpy(tokens_BT.astype(np.int64))

  def call():
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      return model(input_ids=tokens).logits

  return call


def main(argv):
  del argv
  model_dir = common.demo_model_dir()
  B, T = FLAGS.batch, FLAGS.seq_len
  tokens_BT = packed_batch(model_dir, B, T)
  print(f"# forward B={B} T={T}, logits for all {B * T} positions; {common.machine()}", flush=True)

  # bf16 runs both ways on each side: weights stored in bf16 vs fp32 weights cast on the fly.
  specs = []  # (system, label, setup)
  for dtype in FLAGS.dtypes:
    bf16 = dtype != "float32"
    if "paced_jax" in FLAGS.systems:
      for compute, param, label in ([("bfloat16", "float32", "bf16 compute, fp32 params"),
                                     ("bfloat16", "bfloat16", "bf16 compute, bf16 params")] if bf16
                                    else [("float32", "float32", "float32")]):
        specs.append(("paced_jax", label, lambda c=compute, p=param: setup_paced(model_dir, tokens_BT, c, p)))
    if "torch" in FLAGS.systems:
      for torch_dtype, autocast, label in ([("bfloat16", False, "bf16 model.to(bf16)"),
                                            ("float32", True, "bf16 autocast, fp32 params")] if bf16
                                           else [("float32", False, "float32")]):
        specs.append(("torch", label, lambda d=torch_dtype, a=autocast: setup_torch(model_dir, tokens_BT, d, a)))

  calls = [setup() for _, _, setup in specs]
  first, timed, _ = common.round_robin(calls, FLAGS.repeats, [f"{s} {l}" for s, l, _ in specs])
  print(f"# load average after: {common.load()}")

  results = [(s, l, f, common.median(t), B * T / common.median(t), t) for (s, l, _), f, t in zip(specs, first, timed)]
  for s, l, _, _, _, t in results:
    print(f"{s:9s} {l:28s} timed calls: {', '.join(f'{x:.3f}' for x in t)}")
  torch_fp32 = next((r[4] for r in results if r[0] == "torch" and r[1] == "float32"), None)
  rows = [(s, l, f"{f:.2f}", f"{m:.3f}", f"{tps:.0f}", f"{tps / torch_fp32:.2f}" if torch_fp32 else "-")
          for s, l, f, m, tps, _ in results]
  print()
  print(common.table(["system", "variant", "first call s", "median s", "tok/s", "vs torch fp32"], rows))
  for dtype in FLAGS.dtypes:  # like for like: best of ours against best of torch at the same dtype
    ours = [r for r in results if r[0] == "paced_jax" and (r[1] == "float32") == (dtype == "float32")]
    theirs = [r for r in results if r[0] == "torch" and (r[1] == "float32") == (dtype == "float32")]
    if ours and theirs:
      a, b = max(ours, key=lambda r: r[4]), max(theirs, key=lambda r: r[4])
      print(f"{dtype}: best paced_jax ({a[1]}) / best torch ({b[1]}) = {a[4] / b[4]:.2f}x")


if __name__ == "__main__":
  app.run(main)
