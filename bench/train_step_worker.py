"""The worker side of bench/train_step.py: one variant's batch, model, step and timing, in its own process.

bench/train_step.py defines the flags and runs each variant as `train_step.py --worker=VARIANT`,
which lands in `worker` here; the flags are read from absl's registry at call time.
"""

from __future__ import annotations

import json
import os
import resource
import time

import numpy as np
from absl import flags

FLAGS = flags.FLAGS


def parse_variant(name: str) -> dict:
  parts = name.split("_")
  system, dtype = parts[0], {"fp32": "float32", "bf16": "bfloat16"}.get(parts[1] if len(parts) > 1 else "")
  extra = set(parts[2:])
  known = {"jax": {"remat", "full", "logits"}, "torch": {"compile"}}
  if system not in known or dtype is None or not extra <= known[system]:
    raise ValueError(f"unknown variant {name!r}")
  return dict(system=system, dtype=dtype, remat="remat" in extra, full_logits="full" in extra,
              compile="compile" in extra)


def rss_mib() -> tuple[float, float]:
  """(current RSS, max RSS so far) of this process, MiB."""
  current = 0.0
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        current = int(line.split()[1]) / 1024
  return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# The batch (shared by both systems: same tokens, same teacher signal)


def make_batch(model_dir: str):
  """(numpy Batch, valid vocab): one chat-text sequence per row, teacher signal on its last positions."""
  from bench import common
  from paced_jax.training import packing
  from paced_jax.model import tokenization

  B, T, K, R = FLAGS.batch, FLAGS.seq_len, FLAGS.top_k, FLAGS.loss_tokens
  if not 0 < R < T:
    raise ValueError(f"--loss_tokens must be in (0, {T}), got {R}")
  vocab = tokenization.valid_vocab_size(tokenization.load_tokenizer(model_dir))
  stream = np.concatenate([np.asarray(p, np.int32) for p in common.chat_prompts(model_dir, 200)])
  stream = np.tile(stream, -(-B * T // len(stream)))[:B * T].reshape(B, T)
  rng = np.random.default_rng(FLAGS.seed)
  examples = []
  for row in stream:
    # Distinct top-k ids, sorted by probability; the top-k holds 50-99% of the mass, the tail the rest.
    ids = np.stack([rng.choice(vocab, K, replace=False) for _ in range(R)]).astype(np.int32)
    top_mass = rng.uniform(0.5, 0.99, size=(R, 1))
    logits = -np.sort(-rng.normal(size=(R, K)) * 2.0, axis=-1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = top_mass * probs / probs.sum(-1, keepdims=True)
    # A prompt of T - R tokens puts the R predictions at positions T - R - 1 .. T - 2 (packing.py).
    examples.append(packing.Example(row, T - R, ids, np.log(probs).astype(np.float32),
                                    (1.0 - top_mass[:, 0]).astype(np.float32), weight=1.0))
  batch, dropped = packing.pack(examples, rows=B, seq_len=T, top_k=K)
  assert dropped == 0 and int(batch.loss_mask.sum()) == B * R
  return batch, vocab


def timed_calls(call, n: int) -> list[float]:
  out = []
  for _ in range(n):
    start = time.perf_counter()
    call()
    out.append(time.perf_counter() - start)
  return out


def matmul_peak(system: str, dtype: str, n: int, repeats: int = 5) -> float:
  """Best-of-`repeats` FLOP/s of one n x n x n matmul in `system` ("jax" / "torch") at `dtype`."""
  if system == "jax":
    import jax
    import jax.numpy as jnp
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32).astype(dtype) for i in range(2))
    mm = jax.jit(jnp.matmul)
    call = lambda: mm(a, b).block_until_ready()
  else:
    import torch
    ta, tb = (torch.randn(n, n, dtype=getattr(torch, dtype)) for _ in range(2))
    call = lambda: torch.mm(ta, tb)
  call()
  return 2.0 * n ** 3 / min(timed_calls(call, repeats))


def measure(calls: dict, spec: dict) -> dict:
  """The timing protocol, shared by both systems.

  One first call of each (JAX: compiled ahead, so this is the first execution; torch.compile
  compiles here), `--warmup` untimed rounds, then `--steps` timed rounds that interleave the
  calls (the step and, for breakdown variants, its parts), so load from other processes hits
  them alike. The matmul peak of this framework and dtype is measured right before and after
  the timed rounds, in this process, so MFU is relative to what the machine gave at the time.
  """
  from bench import common
  first = {"step": timed_calls(calls["step"], 1)[0]}
  rss_step = rss_mib()[1]  # before any breakdown part allocates: the step's own peak
  first.update({k: timed_calls(c, 1)[0] for k, c in calls.items() if k != "step"})
  for _ in range(FLAGS.warmup):
    for c in calls.values():
      c()
  peaks = [matmul_peak(spec["system"], spec["dtype"], FLAGS.peak_size)]
  loads = [os.getloadavg()[0]]
  timed = {k: [] for k in calls}
  for r in range(FLAGS.steps):
    for k, c in calls.items():
      timed[k] += timed_calls(c, 1)
    loads.append(os.getloadavg()[0])
    print(f"  round {r + 1}/{FLAGS.steps}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in timed.items())
          + f"; load average {common.load()}", flush=True)
  peaks.append(matmul_peak(spec["system"], spec["dtype"], FLAGS.peak_size))
  return dict(first_s=first["step"], timed=timed.pop("step"), parts={k: float(np.median(v)) for k, v in timed.items()},
              parts_timed=timed, peak=max(peaks), peaks=peaks, load_1min=loads, max_rss_step_mib=rss_step)


# ---------------------------------------------------------------------------------------------
# paced_jax worker


def run_jax(spec: dict, model_dir: str, breakdown: bool) -> dict:
  import jax
  from flax import nnx

  from paced_jax import mesh as mesh_lib
  from paced_jax.model import hf_checkpoint
  from paced_jax.training import losses
  from paced_jax.config import TrainConfig
  from paced_jax.training import train_step as ts

  np_batch, vocab = make_batch(model_dir)
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(model_dir, mesh, compute_dtype=spec["dtype"],
                                                   param_dtype="float32", remat=spec["remat"])
  step_cfg = ts.StepConfig(graphdef, TrainConfig(lr=1e-5, weight_decay=0.1, grad_clip=1.0,
                                                 loss_chunk=FLAGS.seq_len if spec["full_logits"] else FLAGS.loss_chunk),
                           valid_vocab=vocab if vocab < cfg.vocab_size else None)
  pure = nnx.to_pure_dict(params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(pure))
  state = ts.init_state(pure, step_cfg)
  state_sh = ts.state_shardings(state, jax.tree.map(lambda x: x.sharding, pure), mesh, step_cfg)
  state = jax.device_put(state, state_sh)
  batch_sh = ts.Batch.shardings(mesh)
  batch = jax.device_put(np_batch, batch_sh)
  del params, pure
  rss_loaded = rss_mib()

  step = ts.jit_train_step(step_cfg, state_sh, mesh).jitted  # lowered here: memory_analysis needs it
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  memory = dict(temp=mem.temp_size_in_bytes, args=mem.argument_size_in_bytes, out=mem.output_size_in_bytes,
                alias=mem.alias_size_in_bytes)
  memory["peak"] = memory["args"] + memory["out"] + memory["temp"] - memory["alias"]
  print(f"  compiled in {compile_s:.1f}s; memory_analysis MiB: "
        + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in memory.items()), flush=True)

  holder = {"state": state}
  losses_seen = []

  def one_step():
    with jax.set_mesh(mesh):
      holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))
    losses_seen.append((float(metrics["loss"]), float(metrics["grad_norm"]), int(metrics["skipped"])))

  calls = {"step": one_step}
  if breakdown:
    def fwd_loss(p, b):
      denom = losses.loss_denominator(b.loss_mask, b.segment_ids, b.weight, reduction=step_cfg.train.token_reduction,
                                      weight_norm=step_cfg.weight_norm)
      return ts.loss_and_metrics(p, b, denom, step_cfg)[0]

    def fwd_model(p, b):  # the decoder alone: what the loss head adds is fwd - fwd_model
      hidden = nnx.merge(graphdef, p)(b.tokens, b.positions, b.segment_ids)
      return hidden.astype(np.float32).sum()

    fns = {"fwd_model": fwd_model, "fwd": fwd_loss,
           "fwd_bwd": lambda p, b: ts.accumulate_gradients(p, b, step_cfg)[::2]}
    for name, fn in fns.items():
      jitted = jax.jit(fn)  # compiled in its first call, after the step's max RSS is taken

      def run(jitted=jitted):
        with jax.set_mesh(mesh):
          jax.block_until_ready(jitted(holder["state"].params, batch))
      calls[name] = run
  return dict(**measure(calls, spec), compile_s=compile_s, memory=memory, params=n_params,
              loss0=losses_seen[0][0], grad_norm0=losses_seen[0][1], skipped=sum(s for _, _, s in losses_seen),
              rss_loaded_mib=rss_loaded[0], cfg=dict(layers=cfg.num_layers, heads=cfg.num_heads, head_dim=cfg.head_dim))


# ---------------------------------------------------------------------------------------------
# PyTorch worker


def run_torch(spec: dict, model_dir: str, breakdown: bool) -> dict:
  import torch
  import transformers

  from bench import torch_reference

  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  np_batch, vocab = make_batch(model_dir)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
  model.train()  # SmolLM2 has no dropout; train mode as a training loop would have it
  n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
  tokens = torch.from_numpy(np_batch.tokens.astype(np.int64))
  ids = torch.from_numpy(np_batch.teacher_ids.astype(np.int64))
  t_logp = torch.from_numpy(np_batch.teacher_logprobs)
  t_tail = torch.from_numpy(np_batch.teacher_tail)
  mask = torch.from_numpy(np_batch.loss_mask)
  position_ids = torch.from_numpy(np_batch.positions.astype(np.int64))
  bf16 = spec["dtype"] == "bfloat16"
  rss_loaded = rss_mib()

  def compute_loss():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      logits = model(input_ids=tokens, position_ids=position_ids, use_cache=False).logits
    return torch_reference.bucket_forward_kl(logits, ids, t_logp, t_tail, mask, vocab)  # float32, outside autocast

  if spec["compile"]:
    compute_loss = torch.compile(compute_loss)

  seen = []

  def one_step():
    loss = compute_loss()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    seen.append((loss.detach().item(), grad_norm.item()))

  # torch.compile compiles inside the first call (forward) and first backward: that call is the
  # "first" time, as for JAX's compile + first step.
  calls = {"step": one_step}
  if breakdown:
    def fwd_model():
      with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.model(input_ids=tokens, position_ids=position_ids, use_cache=False)

    def fwd():
      with torch.no_grad():
        compute_loss()

    def fwd_bwd():
      compute_loss().backward()
      opt.zero_grad(set_to_none=True)

    calls.update(fwd_model=fwd_model, fwd=fwd, fwd_bwd=fwd_bwd)
  return dict(**measure(calls, spec), compile_s=None, memory=None, params=n_params, loss0=seen[0][0],
              grad_norm0=seen[0][1], skipped=0, rss_loaded_mib=rss_loaded[0],
              cfg=dict(layers=model.config.num_hidden_layers, heads=model.config.num_attention_heads,
                       head_dim=model.config.head_dim), torch_threads=torch.get_num_threads())


def worker(name: str) -> None:
  from bench import common
  spec = parse_variant(name)
  model_dir = common.demo_model_dir()
  run = run_jax if spec["system"] == "jax" else run_torch
  out = run(spec, model_dir, name in FLAGS.breakdown)
  out["max_rss_mib"] = rss_mib()[1]
  print("RESULT " + json.dumps(out), flush=True)
