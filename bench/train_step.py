"""Train step throughput and memory: paced_jax's train step vs an equivalent PyTorch step.

The workload is one PACED distillation step on SmolLM2-135M-Instruct: B rows x T tokens (one
sequence per row, real chat text), the loss on the last `--loss_tokens` positions of each row,
forward KL over the teacher's k+1 buckets (top-k ids + log-probs + tail, from random but valid
teacher distributions), AdamW (lr 1e-5, weight decay 0.1) after global-norm clipping at 1.0.

Variants (`--variants`):
  jax_fp32, jax_bf16           paced_jax `train_step` (model compute_dtype float32 / bfloat16,
                               float32 master weights), the loss in chunks of --loss_chunk
  ..._remat                    the same with each decoder layer rematerialised
  jax_fp32_full_logits         loss_chunk = T: all [B, T, V] logits in one chunk (memory baseline)
  torch_fp32, torch_bf16       transformers AutoModelForCausalLM + the same loss in torch, eager;
                               bf16 = autocast over fp32 weights (what paced_jax's bf16 does)
  torch_fp32_compile, ...      the model + loss under torch.compile (optimizer stays eager)

Every variant runs in a fresh subprocess (this file doubles as the worker, `--worker=VARIANT`),
so its max RSS (resource.getrusage) is its own. Per variant: compile (JAX: lower + compile,
timed on their own; torch.compile: folded into the warmup steps), `--warmup` untimed steps,
then `--steps` timed steps; the median is reported. For paced_jax, compiled.memory_analysis()
gives XLA's own accounting (arguments, outputs, temporaries); peak ~ args + outputs + temp -
aliased (the donated state is aliased to the new state).

MFU = (6 * params * B * T + attention flops) / median step s / measured peak, where attention
flops = 3 (fwd + bwd) * L * 2 matmuls * 2 * B * T^2 * H * Dh (non-causal count; remat's extra
forward is not counted: it is model flops, not hardware flops). The peaks are 2048^3 matmuls
timed in this script (JAX and torch, fp32 and bf16, best of several, before and after the
variants); each variant is divided by its own framework's peak at its compute dtype.

`--breakdown` variants additionally time forward only (model + loss) and forward + backward
(gradients, no optimizer) with the same protocol, to show where a step's time goes.

  .venv/bin/python bench/train_step.py --steps=3 --json_out=/tmp/train_step.json
  .venv/bin/python bench/train_step.py --variants=jax_fp32,torch_fp32 --batch=4 --seq_len=128
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 8, "rows per step (B)")
flags.DEFINE_integer("seq_len", 256, "tokens per row (T)")
flags.DEFINE_integer("top_k", 64, "teacher top-k (K); the loss has K + 1 buckets")
flags.DEFINE_integer("loss_tokens", 200, "trained positions per row (the last ones of the row)")
flags.DEFINE_integer("loss_chunk", 128, "paced_jax loss chunk (positions per logits block)")
flags.DEFINE_integer("steps", 3, "timed steps per variant (median reported)")
flags.DEFINE_integer("warmup", 1, "untimed steps before the timed ones (after compilation)")
flags.DEFINE_list("variants", ["jax_fp32", "torch_fp32", "jax_bf16", "torch_bf16", "jax_fp32_remat", "jax_bf16_remat",
                               "torch_fp32_compile", "torch_bf16_compile", "jax_fp32_full_logits"],
                  "variants to run, in this order (see the module docstring); systems alternate, so a change "
                  "in the machine's load does not land on one system only")
flags.DEFINE_list("breakdown", ["jax_fp32", "jax_bf16", "torch_fp32", "torch_bf16"],
                  "variants that also time forward-only and forward+backward")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default)")
flags.DEFINE_integer("peak_size", 2048, "n of the n x n x n matmuls that measure the peaks")
flags.DEFINE_integer("worker_timeout", 1800, "seconds before a variant's subprocess is killed")
flags.DEFINE_integer("seed", 0, "seed of the batch and the teacher distributions")
flags.DEFINE_string("json_out", "", "also write all results here")
flags.DEFINE_string("worker", "", "internal: run this one variant and print its RESULT line")

# Flags the parent hands to each worker unchanged.
_WORKER_FLAGS = ("batch", "seq_len", "top_k", "loss_tokens", "loss_chunk", "steps", "warmup", "torch_threads",
                 "peak_size", "seed")


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
  from paced_jax import packing, tokenization

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

  from paced_jax import hf_checkpoint, losses, mesh as mesh_lib, train_step as ts

  np_batch, vocab = make_batch(model_dir)
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(model_dir, mesh, compute_dtype=spec["dtype"],
                                                   param_dtype="float32", remat=spec["remat"])
  step_cfg = ts.StepConfig(graphdef=graphdef, lr=1e-5, weight_decay=0.1, grad_clip=1.0,
                           loss_chunk=FLAGS.seq_len if spec["full_logits"] else FLAGS.loss_chunk,
                           valid_vocab=vocab if vocab < cfg.vocab_size else None)
  pure = nnx.to_pure_dict(params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(pure))
  state = ts.init_state(pure, step_cfg)
  state_sh = ts.state_shardings(state, jax.tree.map(lambda x: x.sharding, pure), mesh, step_cfg)
  state = jax.device_put(state, state_sh)
  batch_sh = ts.Batch(*(mesh_lib.batch_sharding(mesh, np.ndim(x)) for x in np_batch))
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
      denom = losses.loss_denominator(b.loss_mask, b.segment_ids, b.weight, reduction=step_cfg.token_reduction,
                                      weight_norm=step_cfg.weight_norm)
      return ts.loss_and_metrics(p, b, denom, step_cfg)[0]

    def fwd_model(p, b):  # the decoder alone: what the loss head adds is fwd - fwd_model
      hidden, _ = nnx.merge(graphdef, p)(b.tokens, b.positions, b.segment_ids)
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


# ---------------------------------------------------------------------------------------------
# Parent: peaks, one subprocess per variant, the table


def matmul_peaks(n: int) -> dict[str, float]:
  """All four peaks (jax / torch x float32 / bfloat16), for the log: MFU uses each worker's own."""
  if FLAGS.torch_threads:
    import torch
    torch.set_num_threads(FLAGS.torch_threads)
  return {f"{s}_{d}": matmul_peak(s, d, n, repeats=8) for d in ("float32", "bfloat16") for s in ("jax", "torch")}


# absl INFO / WARNING lines and progress bars of the workers: not echoed (still kept for errors).
_NOISE = re.compile(r"^([IW]\d{4} |Loading weights|.*Warning)")


def run_worker(name: str) -> dict:
  """Run one variant in a fresh process, echoing its output; its RESULT, or an error."""
  argv = [sys.executable, os.path.abspath(__file__), f"--worker={name}", f"--breakdown={','.join(FLAGS.breakdown)}"]
  argv += [f"--{f}={getattr(FLAGS, f)}" for f in _WORKER_FLAGS]
  start = time.perf_counter()
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  timer = threading.Timer(FLAGS.worker_timeout, proc.kill)  # only this child, by its handle
  timer.start()
  result, tail = None, []
  for line in proc.stdout:
    if line.startswith("RESULT "):
      result = json.loads(line[len("RESULT "):])
    else:
      tail = (tail + [line.rstrip()])[-20:]
      if line.strip() and not _NOISE.match(line):
        print(f"  [{name}] {line.rstrip()}", flush=True)
  proc.wait()
  timer.cancel()
  wall = time.perf_counter() - start
  if result is None:
    why = "timed out" if wall >= FLAGS.worker_timeout else f"exit {proc.returncode}"
    print(f"  [{name}] FAILED ({why}):\n" + "\n".join(tail), flush=True)
    return dict(error=why, wall_s=wall)
  result["wall_s"] = wall
  return result


def model_flops(r: dict) -> float:
  B, T = FLAGS.batch, FLAGS.seq_len
  c = r["cfg"]
  attention = 3 * c["layers"] * 2 * 2 * B * T * T * c["heads"] * c["head_dim"]
  return 6.0 * r["params"] * B * T + attention


def report(results: dict, peaks: dict) -> None:
  from bench import common

  B, T = FLAGS.batch, FLAGS.seq_len
  mib = lambda b: f"{b / 2**20:.0f}"
  rows = []
  for name, r in results.items():
    if "error" in r:
      rows.append((name, r["error"]) + ("-",) * 13)
      continue
    spec = parse_variant(name)
    med = float(np.median(r["timed"]))
    r["median_s"], r["tok_s"] = med, B * T / med
    r["mfu"] = model_flops(r) / med / r["peak"]
    r["mfu_best_peak"] = model_flops(r) / med / peaks[f"{spec['system']}_{spec['dtype']}"]
    m = r["memory"]
    rows.append((name, f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-", f"{r['first_s']:.1f}",
                 f"{med:.2f}", f"{r['tok_s']:.0f}", f"{r['peak'] / 1e9:.0f}", f"{100 * r['mfu']:.1f}%",
                 f"{min(r['load_1min']):.1f}-{max(r['load_1min']):.1f}", f"{r['loss0']:.5f}",
                 f"{r['grad_norm0']:.3f}", mib(m["temp"]) if m else "-", mib(m["args"]) if m else "-",
                 mib(m["peak"]) if m else "-", f"{r['rss_loaded_mib']:.0f}", f"{r['max_rss_step_mib']:.0f}"))
  print(f"\n### train step B={B} T={T} k={FLAGS.top_k}, {B * FLAGS.loss_tokens} loss tokens, "
        f"median of {FLAGS.steps} steps after {FLAGS.warmup} warmup; peak = this framework's {FLAGS.peak_size}^3 "
        f"matmul at the variant's dtype, measured in its worker around its timed steps")
  print(common.table(["variant", "compile s", "first step s", "median step s", "tok/s", "peak GFLOP/s", "MFU",
                      "load 1m", "loss step 0",
                      "grad norm 0", "XLA temp MiB", "XLA args MiB", "XLA peak MiB", "RSS loaded MiB",
                      "max RSS MiB"], rows))

  parts = [(n, r) for n, r in results.items() if r.get("parts")]
  if parts:
    print("\n### where the time goes (median s): decoder forward, + loss head, forward + backward, whole step")
    print(common.table(["variant", "fwd model", "fwd + loss", "fwd + bwd", "step", "bwd / fwd", "optimizer + clip"],
                       [(n, f"{r['parts']['fwd_model']:.2f}", f"{r['parts']['fwd']:.2f}",
                         f"{r['parts']['fwd_bwd']:.2f}", f"{r['median_s']:.2f}",
                         f"{(r['parts']['fwd_bwd'] - r['parts']['fwd']) / r['parts']['fwd']:.2f}",
                         f"{r['median_s'] - r['parts']['fwd_bwd']:.2f}") for n, r in parts]))

  ok = {n: r for n, r in results.items() if "error" not in r}
  best = lambda pred: max(((n, r) for n, r in ok.items() if pred(n)), key=lambda nr: nr[1]["tok_s"], default=None)
  print()
  for label, pred in (("all", lambda n: True), ("float32", lambda n: "fp32" in n), ("bfloat16", lambda n: "bf16" in n)):
    a = best(lambda n: n.startswith("jax") and "full_logits" not in n and pred(n))
    b = best(lambda n: n.startswith("torch") and pred(n))
    if a and b:
      print(f"{label}: best paced_jax {a[0]} {a[1]['tok_s']:.0f} tok/s / best torch {b[0]} {b[1]['tok_s']:.0f} "
            f"tok/s = {a[1]['tok_s'] / b[1]['tok_s']:.2f}x; max RSS {a[1]['max_rss_step_mib']:.0f} / "
            f"{b[1]['max_rss_step_mib']:.0f} MiB = {a[1]['max_rss_step_mib'] / b[1]['max_rss_step_mib']:.2f}x")
  chunked, full = ok.get("jax_fp32"), ok.get("jax_fp32_full_logits")
  if chunked and full:
    c, f = chunked["memory"], full["memory"]
    print(f"loss in chunks of {FLAGS.loss_chunk} vs one [B, T, V] chunk (fp32): XLA temp {mib(c['temp'])} vs "
          f"{mib(f['temp'])} MiB ({f['temp'] / c['temp']:.2f}x), peak {mib(c['peak'])} vs {mib(f['peak'])} MiB; "
          f"max RSS {chunked['max_rss_step_mib']:.0f} vs {full['max_rss_step_mib']:.0f} MiB")


def main(argv):
  del argv
  if FLAGS.worker:
    return worker(FLAGS.worker)
  from bench import common

  for v in FLAGS.variants:
    parse_variant(v)  # fail before minutes of work
  common.demo_model_dir()
  print(f"# train step bench: B={FLAGS.batch} T={FLAGS.seq_len} k={FLAGS.top_k} loss_tokens={FLAGS.loss_tokens} "
        f"loss_chunk={FLAGS.loss_chunk}; {common.machine()}", flush=True)
  peaks = matmul_peaks(FLAGS.peak_size)
  print("# matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()), flush=True)
  results = {}
  for name in FLAGS.variants:
    print(f"## {name} (load average {common.load()})", flush=True)
    results[name] = run_worker(name)
    r = results[name]
    if "error" not in r:
      print(f"  {name}: first {r['first_s']:.1f}s, timed {', '.join(f'{t:.2f}' for t in r['timed'])}s, "
            f"loss0 {r['loss0']:.5f}, max RSS {r['max_rss_step_mib']:.0f} MiB, parts {r['parts']}, "
            f"wall {r['wall_s']:.0f}s", flush=True)
  after = matmul_peaks(FLAGS.peak_size)
  print("# matmul peaks after (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in after.items()), flush=True)
  peaks = {k: max(v, after[k]) for k, v in peaks.items()}  # a peak is a best case: the better of the two
  print(f"# load average after: {common.load()}")
  report(results, peaks)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(dict(peaks=peaks, results=results, flags={f: getattr(FLAGS, f) for f in _WORKER_FLAGS}), f, indent=1)


if __name__ == "__main__":
  app.run(main)
