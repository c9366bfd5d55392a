"""Sampling throughput: paced_jax's Sampler vs transformers `generate` (and optionally Tunix).

Two workloads on SmolLM2-135M-Instruct with chat-rendered built-in problems:
  * group: P prompts x K samples x N new tokens (default 16 x 8 x 128), sampled at the same
    settings on every system (temperature 1, no top-k / top-p by default);
  * batch 1: one prompt, one greedy sample of exactly N tokens (stop ids off on every system,
    so each one decodes the same number of steps: a per-token latency measure).

Counted per call: useful tokens (each sequence's tokens up to and including its stop token)
and slot tokens (what the batch computed: transformers and Tunix decode every row until all
are done, rows x steps; paced_jax refills finished rows, so its slots are rows x decode steps
plus the first tokens sampled at each refill). Throughput uses the median of the timed calls;
the first call (compilation, warmup) is reported separately and excluded. Each call repeats
the same work (same seeds).

  .venv/bin/python bench/sampler.py --batch_rows=32,64,128 --chunk_steps=8,16,32 --repeats=2
  .venv/bin/python bench/sampler.py --tunix_python=/tmp/tunix-venv/bin/python

Tunix runs in its own virtualenv: this file doubles as its worker (`--tunix_worker=SPEC.json`),
which is why nothing from paced_jax or torch is imported at module level.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_prompts", 16, "prompts in the group workload")
flags.DEFINE_integer("num_samples", 8, "samples per prompt in the group workload")
flags.DEFINE_integer("max_new_tokens", 128, "new tokens per sample (at most)")
flags.DEFINE_string("source", "basic_arithmetic", "built-in problem source for the prompts")
flags.DEFINE_float("temperature", 1.0, "sampling temperature (group workload)")
flags.DEFINE_float("top_p", 1.0, "top-p (1 = off)")
flags.DEFINE_integer("top_k", 0, "top-k (0 = off)")
flags.DEFINE_list("batch_rows", ["32", "64", "128"], "paced_jax batch_rows values to sweep (group)")
flags.DEFINE_list("chunk_steps", ["16", "32"], "paced_jax chunk_steps values to sweep (group and batch 1)")
flags.DEFINE_enum("kv_cache", "dense", ["dense", "paged"], "paced_jax's KV cache (paged: a pool for every row at "
                  "full length; on CPU pages are gathered into a window)")
flags.DEFINE_list("dtypes", ["float32"], "float32 and/or bfloat16 (bf16: paced_jax bf16 params + compute, "
                  "torch model.to(bf16))")
flags.DEFINE_list("workloads", ["group", "batch1"], "group and/or batch1")
flags.DEFINE_list("systems", ["paced_jax", "torch"], "paced_jax and/or torch (tunix: see --tunix_python)")
flags.DEFINE_integer("repeats", 2, "timed calls per variant after the first (median reported)")
flags.DEFINE_string("tunix_python", "", "python of a virtualenv with google-tunix; runs Tunix's sampler too")
flags.DEFINE_string("tunix_worker", "", "internal: run as the Tunix worker on this spec file")
flags.DEFINE_string("json_out", "", "also write all results here (with paced_jax's per-sequence lengths)")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default, one per core). On a loaded "
                     "machine 1 is much faster: torch's spinning worker threads collapse under oversubscription")


# ---------------------------------------------------------------------------------------------
# Counting


def useful_count(tokens, stop_ids) -> int:
  """Tokens up to and including the first stop id (all of them when none occurs)."""
  hits = np.flatnonzero(np.isin(np.asarray(tokens), list(stop_ids)))
  return int(hits[0]) + 1 if len(hits) else len(tokens)


def result(system, workload, variant, first, timed, useful, slot, **extra):
  med = float(np.median(timed)) if timed else float("nan")
  return dict(system=system, workload=workload, variant=variant, first_s=first, timed_s=timed, median_s=med,
              useful=useful, slot=slot, useful_tps=useful / med, slot_tps=slot / med, **extra)


# ---------------------------------------------------------------------------------------------
# paced_jax


def paced_setups(model_dir, dtype, workload, prompts, stop_ids, pad_id, valid_vocab):
  """(variant label, call) pairs; each call returns (useful, slot) of one full generate."""
  from paced_jax.sampling import sampler as sampler_lib
  from bench import common

  bf16 = dtype == "bfloat16"
  cfg, graphdef, params, mesh = common.load_paced(model_dir, *(("bfloat16",) * 2 if bf16 else ("float32",) * 2))

  # Batch 1 decodes a fixed N tokens: no stop ids.
  stops = stop_ids if workload == "group" else ()
  sampler = sampler_lib.Sampler(cfg, params, mesh, stop_ids=stops, valid_vocab=valid_vocab, pad_id=pad_id)
  N = FLAGS.max_new_tokens
  if workload == "group":
    grid = [(int(r), int(c)) for r in FLAGS.batch_rows for c in FLAGS.chunk_steps]
    base = dict(temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k, num_samples=FLAGS.num_samples)
  else:
    grid = [(1, int(c)) for c in FLAGS.chunk_steps]
    base = dict(greedy=True, num_samples=1)

  def call(sc):
    work = sampler_lib.Work()
    out = sampler.generate(prompts, sc, progress=False, work=work)
    lengths = [len(r.tokens) for rs in out for r in rs]  # tokens incl. the stop token, in (prompt, sample) order
    useful = sum(useful_count(r.tokens, stop_ids if workload == "group" else ()) for rs in out for r in rs)
    return useful, work.slots, lengths

  return [(f"{dtype} rows={r} chunk={c}",
           functools.partial(call, sampler_lib.SamplingConfig(max_new_tokens=N, batch_rows=r, chunk_steps=c,
                                                              kv_cache=FLAGS.kv_cache, **base)))
          for r, c in grid]


def replay_schedule(lengths, batch_rows: int, chunk_steps: int, max_new_tokens: int, num_samples: int) -> dict:
  """Slots and steps Sampler.generate spends on sequences of these lengths (stop token included).

  Lengths do not depend on rows, chunking or refill order (each token's key is fold_in(seed,
  sequence, step)), so one run's lengths price every (batch_rows, chunk_steps). This mirrors
  generate's scheduling; `report` prints it next to the measured slots of the same run as a check.
  """
  total, rows = len(lengths), min(batch_rows, len(lengths))
  queue, owner, gen, active = list(range(total))[::-1], [None] * rows, [0] * rows, [False] * rows
  steps = slots = refills = 0
  sizes = set()
  while queue or any(active):
    free = [r for r in range(rows) if owner[r] is None]
    if queue and free:
      take = min(len(free), len(queue))
      unique = len({queue[-1 - j] // num_samples for j in range(take)})
      slots, refills = slots + take, refills + 1
      sizes.add(1 << (unique - 1).bit_length())  # the prefill's compiled prompt count U
      for r in free[:take]:
        owner[r] = queue.pop()
        gen[r], active[r] = 1, lengths[owner[r]] > 1 and max_new_tokens > 1
    n = 0
    while n < chunk_steps and any(active):
      for r in range(rows):
        if active[r]:
          gen[r] += 1
          active[r] = gen[r] < lengths[owner[r]]
      n += 1
    steps, slots = steps + n, slots + rows * n
    owner = [o if a else None for o, a in zip(owner, active)]
  return dict(decode_steps=steps, slots=slots, refills=refills, prefill_sizes=sorted(sizes))


# ---------------------------------------------------------------------------------------------
# transformers + torch


def torch_setup(model_dir, dtype, workload, prompts, stop_ids, pad_id):
  import torch
  import transformers
  from bench import common

  model = common.load_hf(model_dir, dtype)
  N = FLAGS.max_new_tokens
  P = max(len(p) for p in prompts)
  ids = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts])
  mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
  if workload == "group":
    # top_k=0 explicitly: transformers' default is top_k=50.
    gen = transformers.GenerationConfig(
        do_sample=True, temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k, max_new_tokens=N,
        num_return_sequences=FLAGS.num_samples, eos_token_id=list(stop_ids), pad_token_id=pad_id)
  else:
    # No eos_token_id: exactly N steps, as on the other systems.
    gen = transformers.GenerationConfig(do_sample=False, max_new_tokens=N, min_new_tokens=N, eos_token_id=None,
                                        pad_token_id=pad_id)

  def call():
    torch.manual_seed(0)
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    new = out[:, P:].numpy()
    stops = stop_ids if workload == "group" else ()
    lengths = [useful_count(row, stops) for row in new]
    return sum(lengths), new.shape[0] * new.shape[1], lengths

  return [(f"{dtype}{' sdpa' if workload == 'group' else ''}", call)]


# ---------------------------------------------------------------------------------------------
# Tunix (runs in its own virtualenv)


def tunix_worker(spec_path: str) -> None:
  """Load the same safetensors into Tunix's llama3, sample, print one JSON line of results."""
  import jax
  import jax.numpy as jnp
  import transformers
  from tunix.generate import sampler as tunix_sampler
  from tunix.models.llama3 import model as llama3, params as llama3_params

  spec = json.load(open(spec_path))
  hf = json.load(open(os.path.join(spec["model_dir"], "config.json")))
  # Tunix 0.1.7's attention calls apply_rope without rope_theta (always 1e6); SmolLM2 uses 1e5.
  llama3.apply_rope = functools.partial(llama3.apply_rope, rope_theta=hf["rope_theta"])
  cfg = llama3.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
      hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
      num_kv_heads=hf["num_key_value_heads"], rope_theta=hf["rope_theta"], norm_eps=hf["rms_norm_eps"],
      weight_tying=hf["tie_word_embeddings"], shd_config=llama3.ShardingConfig.get_default_sharding(True))
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  dtype = jnp.bfloat16 if spec["dtype"] == "bfloat16" else jnp.float32
  model = llama3_params.create_model_from_safe_tensors(spec["model_dir"], cfg, mesh, dtype=dtype)
  tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model_dir"])
  # Tunix masks every token equal to pad_id, and SmolLM2's pad is <|im_end|>, which is in each prompt.
  tokenizer.pad_token = "<|endoftext|>"
  prompt_len = 1 << (max(len(p) for p in spec["prompts"]) - 1).bit_length()
  N = spec["max_new_tokens"]
  sampler = tunix_sampler.Sampler(model, tokenizer, tunix_sampler.CacheConfig(
      cache_size=prompt_len + N, num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim))
  group = spec["workload"] == "group"
  texts = [t for t in spec["texts"] for _ in range(spec["num_samples"])]
  want = [p for p in spec["prompts"] for _ in range(spec["num_samples"])]
  got = [list(sampler.tokenize(t)) for t in texts]
  assert got == want, "Tunix tokenizes the prompts differently"
  kwargs = (dict(temperature=spec["temperature"], top_p=spec["top_p"], top_k=spec["top_k"] or None,
                 eos_tokens=spec["stop_ids"]) if group else dict(eos_tokens=[-1]))  # -1: never stops

  def call():
    out = sampler(texts, max_generation_steps=N, max_prompt_length=prompt_len, seed=0, **kwargs)
    # Tunix returns tokens before the stop token; count the stop token when one was hit.
    useful = [len(t) + (len(t) < N and group) for t in out.tokens]
    return sum(useful), len(useful) * max(useful)  # its loop runs until the last row is done

  times = []
  for _ in range(spec["repeats"] + 1):
    start = time.perf_counter()
    useful, slot = call()
    times.append(time.perf_counter() - start)
  print("TUNIX_RESULT " + json.dumps(dict(first=times[0], timed=times[1:], useful=useful, slot=slot)), flush=True)


def run_tunix(model_dir, dtype, workload, prompts, texts, stop_ids):
  spec = dict(model_dir=model_dir, dtype=dtype, workload=workload, prompts=prompts, texts=texts,
              num_samples=FLAGS.num_samples if workload == "group" else 1, max_new_tokens=FLAGS.max_new_tokens,
              temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k, stop_ids=list(stop_ids),
              repeats=FLAGS.repeats)
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump(spec, f)
  try:
    # Tunix's jax must not see this process's settings; the worker imports nothing of ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "PYTHONPATH"))}
    proc = subprocess.run([FLAGS.tunix_python, os.path.abspath(__file__), f"--tunix_worker={f.name}"],
                          capture_output=True, text=True, env=env, cwd="/tmp")
  finally:
    os.unlink(f.name)
  line = next((l for l in proc.stdout.splitlines() if l.startswith("TUNIX_RESULT ")), None)
  if proc.returncode or line is None:
    raise RuntimeError(f"Tunix worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
  r = json.loads(line[len("TUNIX_RESULT "):])
  label = f"{dtype} rope_theta patched" + (" top_p=1 path" if workload == "group" else "")
  return result("tunix", workload, label, r["first"], r["timed"], r["useful"], r["slot"])


# ---------------------------------------------------------------------------------------------


def report(results) -> None:
  from bench import common

  for workload in ("group", "batch1"):
    rs = [r for r in results if r["workload"] == workload]
    if not rs:
      continue
    hf = {r["variant"].split()[0]: r for r in rs if r["system"] == "torch"}
    rows = []
    for r in rs:
      ref = hf.get(r["variant"].split()[0])
      ratio = lambda k: f"{r[k] / ref[k]:.2f}" if ref else "-"
      rows.append((r["system"], r["variant"], f"{r['first_s']:.1f}", f"{r['first_s'] - r['median_s']:.1f}",
                   f"{r['median_s']:.1f}", r["useful"], r["slot"], f"{r['useful_tps']:.0f}", f"{r['slot_tps']:.0f}",
                   ratio("useful_tps"), ratio("slot_tps")))
    print(f"\n### {workload}")
    print(common.table(["system", "variant", "first call s", "compile ~s", "median s", "useful tok", "slot tok",
                        "useful tok/s", "slot tok/s", "useful vs HF", "slot vs HF"], rows))
  paced = next((r for r in results if r["system"] == "paced_jax" and r["workload"] == "group"), None)
  if paced:
    useful = sum(paced["lengths"])
    print(f"\n### paced_jax schedule replayed on the lengths of `{paced['variant']}` (measured slots {paced['slot']})")
    grid = sorted({16, 32, 64, 128} | {int(r) for r in FLAGS.batch_rows})
    rows = []
    for b in grid:
      for c in sorted({8, 16, 32, 64} | {int(c) for c in FLAGS.chunk_steps}):
        s = replay_schedule(paced["lengths"], b, c, FLAGS.max_new_tokens, FLAGS.num_samples)
        rows.append((b, c, s["decode_steps"], s["slots"], f"{useful / s['slots']:.2f}", s["refills"],
                     " ".join(map(str, s["prefill_sizes"]))))
    print(common.table(["rows", "chunk", "decode steps", "slots", "useful/slot", "refills", "prefill sizes U"], rows))


def main(argv):
  del argv
  if FLAGS.tunix_worker:
    return tunix_worker(FLAGS.tunix_worker)
  sys.path.insert(0, ROOT)
  from bench import common
  from paced_jax.model import tokenization

  if FLAGS.torch_threads:
    import torch
    torch.set_num_threads(FLAGS.torch_threads)
  model_dir = common.demo_model_dir()
  tokenizer = tokenization.load_tokenizer(model_dir)
  stop_ids, pad_id = tokenization.stop_ids(tokenizer), tokenization.pad_id(tokenizer)
  valid_vocab = tokenization.valid_vocab_size(tokenizer)
  all_prompts = common.chat_prompts(model_dir, FLAGS.num_prompts, FLAGS.source)
  print(f"# sampler: {FLAGS.source}, {FLAGS.num_prompts} prompts x {FLAGS.num_samples} samples x "
        f"{FLAGS.max_new_tokens} new tokens (T={FLAGS.temperature} top_p={FLAGS.top_p} top_k={FLAGS.top_k}); "
        f"batch 1 greedy {FLAGS.max_new_tokens} tokens; stop ids {stop_ids}, pad id {pad_id}; {common.machine()}",
        flush=True)

  results = []
  for workload in FLAGS.workloads:
    prompts = all_prompts if workload == "group" else all_prompts[:1]
    for dtype in FLAGS.dtypes:
      specs = []  # (system, variant, call)
      if "torch" in FLAGS.systems:
        specs += [("torch", v, c) for v, c in torch_setup(model_dir, dtype, workload, prompts, stop_ids, pad_id)]
      if "paced_jax" in FLAGS.systems:
        specs += [("paced_jax", v, c) for v, c in paced_setups(model_dir, dtype, workload, prompts, stop_ids, pad_id,
                                                                valid_vocab)]
      print(f"## {workload} {dtype}: {len(specs)} variants", flush=True)
      first, timed, last = common.round_robin([c for _, _, c in specs], FLAGS.repeats,
                                              [f"{s} {v}" for s, v, _ in specs])
      for (system, variant, _), f, t, (useful, slot, lengths) in zip(specs, first, timed, last):
        results.append(result(system, workload, variant, f, t, useful, slot, lengths=lengths))
        r = results[-1]
        print(f"{system:9s} {workload:6s} {variant:28s} first {f:6.1f}s timed {', '.join(f'{x:.1f}' for x in t)}s "
              f"useful {useful} ({r['useful_tps']:.0f}/s) slot {slot} ({r['slot_tps']:.0f}/s)", flush=True)
      if FLAGS.tunix_python:
        texts = [tokenizer.decode(p) for p in prompts]
        results.append(run_tunix(model_dir, dtype, workload, prompts, texts, stop_ids))
        r = results[-1]
        print(f"tunix     {workload:6s} {r['variant']:28s} first {r['first_s']:6.1f}s "
              f"useful {r['useful']} ({r['useful_tps']:.0f}/s) slot {r['slot']} ({r['slot_tps']:.0f}/s)", flush=True)
  print(f"# load average after: {common.load()}")
  report(results)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
