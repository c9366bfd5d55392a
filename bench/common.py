"""Shared pieces of the benchmarks: the demo model, chat prompts, both models' loaders, timing, tables."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Sequence

import jax

from paced_jax import mesh as mesh_lib
from paced_jax.model import gguf as gguf_import
from paced_jax.model import hf_checkpoint
from paced_jax.problems import builtin
from paced_jax.model import tokenization


def demo_model_dir() -> str:
  """The converted SmolLM2-135M-Instruct (float32 Hugging Face directory) from the cache."""
  return gguf_import.ensure_demo_model()


def chat_prompts(model_dir: str, n: int, source: str = "easy_arithmetic", seed: int = 0) -> list[list[int]]:
  """`n` chat-rendered built-in problems, as token ids with the generation prompt appended."""
  tokenizer = tokenization.load_tokenizer(model_dir)
  return [tokenization.render_chat(tokenizer, p.prompt) for p in builtin.generate(source, n, seed, "train")]


def load_paced(model_dir: str, compute_dtype: str = "float32", param_dtype: str = "float32"):
  """(cfg, graphdef, params, mesh) on one CPU device."""
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(model_dir, mesh, compute_dtype=compute_dtype,
                                                   param_dtype=param_dtype)
  return cfg, graphdef, params, mesh


def load_hf(model_dir: str, dtype: str = "float32"):
  import torch
  import transformers
  model = transformers.AutoModelForCausalLM.from_pretrained(
      model_dir, dtype=getattr(torch, dtype), local_files_only=True)
  return model.eval()


def round_robin(calls: Sequence[Callable[[], object]], repeats: int, names: Sequence[str] = ()):
  """Time one first call of each (compile / warmup), then `repeats` rounds over all of them.

  Rounds interleave the variants, so load from other processes on the machine hits all alike.
  Returns (first-call seconds, per-variant lists of timed seconds, per-variant last result).
  """
  first, timed, last = [], [[] for _ in calls], [None] * len(calls)
  for j, call in enumerate(calls):
    start = time.perf_counter()
    last[j] = call()
    first.append(time.perf_counter() - start)
    if names:
      print(f"  first call {names[j]}: {first[-1]:.2f}s", flush=True)
  for r in range(repeats):
    for j, call in enumerate(calls):
      start = time.perf_counter()
      last[j] = call()
      timed[j].append(time.perf_counter() - start)
    print(f"  round {r + 1}/{repeats} done, load average {load()}", flush=True)
  return first, timed, last


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A Markdown table (pastes straight into bench/README.md)."""
  cells = [[str(h) for h in headers]] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def load() -> str:
  """1/5/15-minute load averages: other processes on the machine skew every number here."""
  return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
  import torch
  return (f"{os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load()}")
