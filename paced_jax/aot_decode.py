"""Ahead-of-time compile of the sampler's decode step for a preset's rollout settings: per-device
cache, weights, temporaries and peak, with no hardware (targets and model shapes as in aot.py).

The figure to watch is temporaries as a share of the cache: a decode step that copies its cache
(or gathers a window of pages) shows up there, and a paged pool smaller than rows x full length
shows that the cache held follows the rows' lengths.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
from flax import nnx

from paced_jax import aot
from paced_jax import mesh as mesh_lib
from paced_jax.config import ExperimentConfig, SamplingConfig
from paced_jax.model import decoder as model_lib
from paced_jax.sampling import sampler as sampler_lib


@dataclasses.dataclass(frozen=True)
class DecodeReport:
  target: aot.Target
  model: str
  sampling: SamplingConfig
  rows: int                   # decode rows, all devices
  rows_per_device: int
  slots: int                  # cache slots a row holds at full length (prompt bucket + max_new_tokens)
  window: int                 # slots a gathering paged step reads per row (its rows' longest length, bucketed)
  pool_tokens: int            # paged: tokens of cache one device's page pool holds
  paged_attention: str        # paged: how the step reads pages, 'ragged' (by each row's length) or 'gather' 
  cache_bytes: int            # per device: the KV cache (dense) or page pool (paged)
  weights_bytes: int          # per device: the decoding copy of the weights
  replicated: bool            # that copy is whole on every batch-axis device
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.generated_code_bytes


def _device_bytes(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def compile_decode_step(cfg: ExperimentConfig, target: aot.Target, *, model: str | None = None,
                        sampling: SamplingConfig | None = None, prompt_len: int = 512, window: int | None = None,
                        replicate_weights: bool | None = None) -> DecodeReport:
  """Lower and compile one decode chunk of the sampler (pass-rate settings by default) with every
  row at the prompt bucket of `prompt_len` + max_new_tokens slots; a paged cache is read through
  `window` slots per row (default: all of them, the longest rows' cost). Decoding weights are
  replicated over the batch axes when that copy takes at most a quarter of the chip's HBM."""
  mcfg, tokenizer_vocab, where = aot.resolve_model(model or cfg.student)
  mcfg = mcfg.replace(compute_dtype=cfg.model.compute_dtype, param_dtype=cfg.model.param_dtype)
  sc = sampling or cfg.pass_rate.sampling
  mesh = aot.experiment_mesh(cfg, target.devices)
  abstract_state = nnx.state(model_lib.abstract_decoder(mcfg))
  shardings = nnx.to_pure_dict(mesh_lib.state_shardings(abstract_state, mesh, cfg.mesh.rules))
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_state), shardings)
  if replicate_weights is None:
    whole = aot.param_count(mcfg) * jnp.dtype(mcfg.compute_dtype).itemsize / mesh.shape["tensor"]
    replicate_weights = bool(target.hbm_bytes and whole <= target.hbm_bytes / 4)
  valid_vocab = min(mcfg.vocab_size, tokenizer_vocab or mcfg.vocab_size)
  sampler = sampler_lib.Sampler(mcfg, params, mesh, stop_ids=(0,), valid_vocab=valid_vocab,
                                replicate_weights=replicate_weights)
  rows = sampler.rows(sc, 1 << 30)
  slots, pages = sampler_lib.prompt_bucket(prompt_len, sc) + sc.max_new_tokens, 0
  if sc.kv_cache == "paged":
    slots = -(-slots // sc.page_size) * sc.page_size
    pages = sampler.pages_per_device(sc, rows, slots // sc.page_size)
    window = slots if sampler.paged_attention(sc) == "ragged" else min(window or slots, slots)
  state = sampler.abstract_state(rows, slots, sc, pages)
  paged = sc.kv_cache == "paged"
  tic = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = sampler_lib.decode_chunk.lower(sampler.spec, sc.compiled_part(), window or 0, sampler.params,
                                              state).compile()
  seconds = time.perf_counter() - tic
  mem = compiled.memory_analysis()
  return DecodeReport(
      target=target, model=where, sampling=sc, rows=rows, rows_per_device=rows // sampler.row_multiple, slots=slots,
      window=window or slots, pool_tokens=pages * sc.page_size,
      paged_attention=sampler.paged_attention(sc) if paged else "",
      cache_bytes=_device_bytes(state.cache.kv_QYZDh if paged else state.cache[:2]),
      weights_bytes=_device_bytes(sampler.params), replicated=replicate_weights,
      argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      generated_code_bytes=int(mem.generated_code_size_in_bytes), compile_seconds=seconds)


def format_report(r: DecodeReport) -> str:
  sc = r.sampling
  lines = [
      f"decode step: {r.model} on {r.target.description}",
      f"  rows          {r.rows_per_device} per device ({r.rows} in all), {sc.chunk_steps} steps per chunk, "
      f"{r.slots} slots per row at full length",
      f"  weights       {aot.gib(r.weights_bytes)}   (decoding copy, "
      f"{'replicated over the batch axes' if r.replicated else 'sharded like the trained weights'})",
  ]
  if sc.kv_cache == "paged":
    per_row, pool = r.slots // sc.page_size, r.pool_tokens // sc.page_size
    read = ("ragged paged attention reads each row's pages up to its length" if r.paged_attention == "ragged" else
            f"gathers {r.window} slots per row into a window")
    lines += [f"  cache         {aot.gib(r.cache_bytes)}   (paged, {sc.page_size}-slot pages; this step {read})",
              f"  pages         {pool} per device = {r.pool_tokens} tokens, for {r.rows_per_device} rows of up to "
              f"{per_row} pages ({r.slots} slots) each = {r.rows_per_device * per_row} pages at full length "
              f"({100 * pool / max(r.rows_per_device * per_row, 1):.0f}%): a row holds ceil(length / "
              f"{sc.page_size}) pages, {r.pool_tokens // max(r.rows_per_device, 1)} slots per row on average"]
  else:
    lines.append(f"  cache         {aot.gib(r.cache_bytes)}   (dense: every row holds {r.slots} slots)")
  lines += [
      f"  compile       {r.compile_seconds:.1f} s",
      f"  arguments     {aot.gib(r.argument_bytes)}   (weights + decode state, cache included)",
      f"  temporaries   {aot.gib(r.temp_bytes)}   ({100 * r.temp_bytes / max(r.cache_bytes, 1):.1f}% of the cache)",
      f"  peak estimate {aot.gib(r.peak_bytes)}",
  ]
  if r.target.hbm_bytes:
    lines.append(f"  HBM per device {aot.gib(r.target.hbm_bytes)}   -> "
                 f"{100 * r.peak_bytes / r.target.hbm_bytes:.0f}% of HBM")
  return "\n".join(lines)
