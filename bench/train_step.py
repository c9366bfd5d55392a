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

Every variant runs in a fresh subprocess (`--worker=VARIANT`: bench/train_step_worker.py),
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


from bench.train_step_worker import matmul_peak, parse_variant, worker  # noqa: E402


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
