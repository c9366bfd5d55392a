"""paced_jax vs transformers + PyTorch on one GPU: train-step and sampling throughput.

Runs where no model hub and no paced_jax extras (grain, reasoning-gym, gguf) are reachable: each
model is a random Hugging Face checkpoint in a real shape (SmolLM2-135M, Qwen3-1.7B), built with
transformers `from_config` and saved as safetensors, which paced_jax then loads like any other.
Throughput does not depend on the weights' values, and nothing here depends on a tokenizer:

  * train step: B rows x T tokens of random ids, the PACED loss (forward KL over the teacher's
    top-k + tail buckets, random valid teacher distributions, every position trained), AdamW
    after global-norm clipping. paced_jax: `train_step.jit_train_step`, bf16 compute on f32
    master weights. PyTorch: f32 weights, bf16 autocast, fused AdamW, the same loss
    (bench/torch_reference.py). Tokens/s, MFU against this GPU's measured bf16 matmul rate.
  * sampling: P random prompts of L tokens x K samples x N new tokens at temperature 1, no stop
    ids (every sequence decodes exactly N tokens on both systems), bf16 weights. paced_jax:
    `Sampler.generate` with all P*K rows at once; transformers: `generate` on the same rows.

  XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/gpu.py --json_out=/tmp/gpu.json   # on the GPU machine
  (JAX and PyTorch share the GPU in one process: JAX must not preallocate most of its memory.)
  python bench/gpu.py --preset=tiny --steps=1             # smoke run of the same code on a CPU
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.train_step_worker import timed_calls as timed  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "gpu", ["gpu", "tiny"], "gpu: real shapes; tiny: a small model, for a CPU smoke run")
flags.DEFINE_list("models", ["smollm2_135m", "qwen3_1p7b"], "model shapes (gpu preset)")
flags.DEFINE_list("parts", ["train", "sample"], "what to measure")
flags.DEFINE_list("systems", ["torch", "paced_jax"], "systems to run, in this order; torch first: it hands its "
                  "cached GPU memory back, while JAX's allocator keeps what it took for the rest of the process")
flags.DEFINE_integer("batch", 8, "train: rows per step")
flags.DEFINE_integer("seq_len", 1024, "train: tokens per row")
flags.DEFINE_integer("top_k", 64, "train: teacher top-k")
flags.DEFINE_integer("loss_chunk", 256, "train: paced_jax loss chunk")
flags.DEFINE_integer("steps", 4, "timed train steps (median), after one warmup step")
flags.DEFINE_integer("prompts", 32, "sample: prompts")
flags.DEFINE_integer("samples", 8, "sample: samples per prompt")
flags.DEFINE_integer("prompt_len", 128, "sample: prompt tokens")
flags.DEFINE_integer("new_tokens", 256, "sample: new tokens per sequence")
flags.DEFINE_string("json_out", "", "also write the results here")

# The real shapes come from paced_jax.model.known_architectures (the presets' table); "tiny" is a CPU smoke run.
MODELS = {"smollm2_135m": "SmolLM2-135M", "qwen3_1p7b": "Qwen3-1.7B"}
TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=1024)


def sync_torch():
  import torch
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def bf16_peak() -> dict:
  """Best-of-5 bf16 matmul FLOP/s of each framework (n = 8192 on a GPU, 1024 on a CPU)."""
  import jax
  import jax.numpy as jnp
  import torch
  n = 8192 if FLAGS.preset == "gpu" else 1024
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  mm = jax.jit(jnp.matmul)
  mm(a, a).block_until_ready()
  jax_s = min(timed(lambda: mm(a, a).block_until_ready(), 5))
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  t = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
  torch.mm(t, t)
  sync_torch()
  torch_s = min(timed(lambda: (torch.mm(t, t), sync_torch()), 5))
  return {"paced_jax": 2 * n ** 3 / jax_s, "torch": 2 * n ** 3 / torch_s}


def make_model(name: str, directory: str) -> str:
  import torch
  import transformers
  from paced_jax.model.known_architectures import KNOWN_ARCHITECTURES
  fields = TINY if name == "tiny" else KNOWN_ARCHITECTURES[MODELS[name]]
  hf = {k: v for k, v in fields.items() if k not in ("tokenizer_vocab", "published_params")}
  config = transformers.AutoConfig.for_model(**hf)
  torch.manual_seed(0)
  with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
  model.save_pretrained(directory)
  return directory


def train_batch(vocab: int):
  """A random packed batch (one sequence per row, every position trained) and its teacher signal."""
  from paced_jax.training import train_step as ts
  B, T, K = FLAGS.batch, FLAGS.seq_len, FLAGS.top_k
  rng = np.random.default_rng(0)
  # Distinct top-k ids per position: a random start plus a stride that cannot wrap onto itself.
  ids = (rng.integers(0, vocab, (B, T, 1)) + np.arange(K) * (vocab // K)) % vocab
  top_mass = rng.uniform(0.5, 0.99, (B, T, 1))
  logits = -np.sort(-rng.normal(size=(B, T, K)) * 2.0, axis=-1)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs = top_mass * probs / probs.sum(-1, keepdims=True)
  ones = np.ones((B, T), np.float32)
  mask = ones.copy()
  mask[:, -1] = 0  # the last position has no next token in the row
  return ts.Batch(tokens=rng.integers(3, vocab, (B, T)).astype(np.int32),
                  positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
                  segment_ids=ones.astype(np.int32), loss_mask=mask, weight=ones,
                  teacher_ids=ids.astype(np.int32), teacher_logprobs=np.log(probs).astype(np.float32),
                  teacher_tail=(1.0 - top_mass[..., 0]).astype(np.float32),
                  pass_bucket=np.zeros((B, T), np.int32))


def train_paced_jax(model_dir: str) -> dict:
  import jax
  from flax import nnx

  from paced_jax import mesh as mesh_lib
  from paced_jax.config import TrainConfig
  from paced_jax.model import hf_checkpoint
  from paced_jax.training import train_step as ts
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(model_dir, mesh, compute_dtype="bfloat16", param_dtype="float32")
  step_cfg = ts.StepConfig(graphdef, TrainConfig(lr=1e-5, weight_decay=0.1, loss_chunk=FLAGS.loss_chunk))
  pure = nnx.to_pure_dict(params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(pure))
  state = ts.init_state(pure, step_cfg)
  state_sh = ts.state_shardings(state, jax.tree.map(lambda x: x.sharding, pure), mesh, step_cfg)
  state = jax.device_put(state, state_sh)
  np_batch = train_batch(cfg.vocab_size)
  batch = jax.device_put(np_batch, ts.Batch.shardings(mesh))
  del params, pure
  step = ts.jit_train_step(step_cfg, state_sh, mesh)
  holder = {"state": state}

  def one():
    holder["state"], metrics = step(holder["state"], batch)
    holder["loss"] = float(metrics["loss"])  # a host read: waits for the step
  first = timed(one, 1)[0]
  times = timed(one, FLAGS.steps)
  peak_bytes = None
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    peak_bytes = stats["peak_bytes_in_use"]
  return dict(first_s=first, step_s=statistics.median(times), times=times, params=n_params, loss=holder["loss"],
              peak_mem_gib=None if peak_bytes is None else peak_bytes / 2**30, cfg=cfg)


def train_torch(model_dir: str) -> dict:
  import torch
  import transformers

  from bench import torch_reference
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev)
  model.train()
  n_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, fused=dev == "cuda")
  b = train_batch(model.config.vocab_size)
  t = lambda x, dtype=None: torch.from_numpy(np.ascontiguousarray(x)).to(dev, dtype)
  tokens, positions = t(b.tokens, torch.long), t(b.positions, torch.long)
  ids, logp, tail, mask = t(b.teacher_ids, torch.long), t(b.teacher_logprobs), t(b.teacher_tail), t(b.loss_mask)
  if dev == "cuda":
    torch.cuda.reset_peak_memory_stats()
  seen = {}

  def one():
    with torch.autocast(dev, dtype=torch.bfloat16):
      logits = model(input_ids=tokens, position_ids=positions, use_cache=False).logits
    loss = torch_reference.bucket_forward_kl(logits, ids, logp, tail, mask, model.config.vocab_size)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    seen["loss"] = loss.item()  # waits for the step
  first = timed(one, 1)[0]
  times = timed(one, FLAGS.steps)
  peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
  return dict(first_s=first, step_s=statistics.median(times), times=times, params=n_params, loss=seen["loss"],
              peak_mem_gib=peak)


def random_prompts(vocab: int) -> list[list[int]]:
  rng = np.random.default_rng(1)
  return [list(map(int, rng.integers(3, vocab, FLAGS.prompt_len))) for _ in range(FLAGS.prompts)]


def sample_paced_jax(model_dir: str) -> dict:
  import jax

  from paced_jax import mesh as mesh_lib
  from paced_jax.model import hf_checkpoint
  from paced_jax.sampling import sampler as sampler_lib
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(model_dir, mesh, compute_dtype="bfloat16", param_dtype="bfloat16")
  sampler = sampler_lib.Sampler(cfg, params, mesh, stop_ids=(), valid_vocab=cfg.vocab_size)
  rows = FLAGS.prompts * FLAGS.samples
  sc = sampler_lib.SamplingConfig(temperature=1.0, max_new_tokens=FLAGS.new_tokens, num_samples=FLAGS.samples,
                                  batch_rows=rows, chunk_steps=FLAGS.new_tokens, prompt_buckets=(FLAGS.prompt_len,))
  prompts = random_prompts(cfg.vocab_size)
  out = {}

  def one():
    out["r"] = sampler.generate(prompts, sc, progress=False)
  first = timed(one, 1)[0]
  times = timed(one, 2)
  tokens = sum(len(r.tokens) for rs in out["r"] for r in rs)
  return dict(first_s=first, call_s=statistics.median(times), tokens=tokens)


def sample_torch(model_dir: str) -> dict:
  import torch
  import transformers
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev).eval()
  prompts = torch.tensor(random_prompts(model.config.vocab_size), device=dev).repeat_interleave(FLAGS.samples, 0)
  out = {}

  def one():
    with torch.no_grad():
      out["ids"] = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                                  top_k=None, top_p=None, max_new_tokens=FLAGS.new_tokens,
                                  min_new_tokens=FLAGS.new_tokens, pad_token_id=0)
    sync_torch()
  first = timed(one, 1)[0]
  times = timed(one, 2)
  return dict(first_s=first, call_s=statistics.median(times), tokens=int(out["ids"][:, FLAGS.prompt_len:].numel()))


def main(_):
  import jax
  import torch
  models = ["tiny"] if FLAGS.preset == "tiny" else FLAGS.models
  header = dict(jax=jax.__version__, jax_devices=str(jax.devices()), torch=torch.__version__,
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
  print("#", json.dumps(header), flush=True)
  peaks = bf16_peak()
  print("# bf16 matmul peak TFLOP/s: " + ", ".join(f"{k} {v / 1e12:.0f}" for k, v in peaks.items()), flush=True)
  results = dict(header=header, peaks=peaks, runs=[])
  runners = {("train", "paced_jax"): train_paced_jax, ("train", "torch"): train_torch,
             ("sample", "paced_jax"): sample_paced_jax, ("sample", "torch"): sample_torch}
  with tempfile.TemporaryDirectory() as tmp:
    for name in models:
      model_dir = make_model(name, os.path.join(tmp, name))
      for part in FLAGS.parts:
        for system in FLAGS.systems:
          start = time.perf_counter()
          try:
            r = runners[part, system](model_dir)
          except Exception as e:  # one failure must not lose the other measurements
            r = dict(error=f"{type(e).__name__}: {e}"[:500])
          r.pop("cfg", None)
          gc.collect()  # drop this run's model before the next one allocates
          if torch.cuda.is_available():
            torch.cuda.empty_cache()
          r.update(model=name, part=part, system=system, wall_s=time.perf_counter() - start)
          if "error" not in r and part == "train":
            tokens = FLAGS.batch * FLAGS.seq_len
            r["tokens_per_s"] = tokens / r["step_s"]
            r["mfu"] = 6.0 * r["params"] * tokens / r["step_s"] / peaks[system]
          elif "error" not in r:
            r["tokens_per_s"] = r["tokens"] / r["call_s"]
          results["runs"].append(r)
          print(json.dumps(r), flush=True)
          if FLAGS.json_out:  # after every run: a timeout later keeps what was measured
            with open(FLAGS.json_out, "w") as f:
              json.dump(results, f, indent=1)
  print("\n| model | part | system | tokens/s | ratio vs torch | MFU | step or call s | first s | peak GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  by = {(r["model"], r["part"], r["system"]): r for r in results["runs"]}
  for r in results["runs"]:
    if "error" in r:
      print(f"| {r['model']} | {r['part']} | {r['system']} | error: {r['error'][:80]} | | | | | |")
      continue
    ref = by.get((r["model"], r["part"], "torch"), {})
    ratio = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if "tokens_per_s" in ref else "-"
    mfu = f"{100 * r['mfu']:.0f}%" if "mfu" in r else "-"
    mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") else "-"
    print(f"| {r['model']} | {r['part']} | {r['system']} | {r['tokens_per_s']:.0f} | {ratio} | {mfu} | "
          f"{r.get('step_s', r.get('call_s')):.3f} | {r['first_s']:.1f} | {mem} |")


if __name__ == "__main__":
  app.run(main)
