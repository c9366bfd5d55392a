"""Ahead-of-time compiles of the train step and the sampler's decode step for a preset: per-device
memory and FLOPs, no hardware.

Nothing is allocated: the student comes from `model.abstract_decoder` (shapes only), the train
state from `jax.eval_shape`, the batch is ShapeDtypeStructs; `jax.jit(...).lower(...).compile()`
then reports what XLA would need on each device. Two targets:
  - a real TPU slice ('v5p-64', 'v6e-64', or a libtpu name like 'v5p:2x4x4'), compiled by libtpu
    from a topology description (`jax.experimental.topologies`); needs the `libtpu` package, not
    a TPU. These numbers are the TPU compiler's own.
  - N fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N set before jax is
    imported). The sharding and the program are the same, but the CPU compiler lays out, fuses
    and schedules differently: its memory numbers are an order-of-magnitude check only.
Model shapes come from a Hugging Face config.json, or from KNOWN_ARCHITECTURES when the
checkpoint is not on this machine (preset paths like /models/Qwen3-1.7B are placeholders).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
import types
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh

from paced_jax import mesh as mesh_lib
from paced_jax.model import attention as attention_lib
from paced_jax.model import decoder as model_lib
from paced_jax.model import config as model_config
from paced_jax.training import trainer
from paced_jax.training import train_step as ts
from paced_jax.config import ExperimentConfig, SamplingConfig
from paced_jax.model.known_architectures import KNOWN_ARCHITECTURES
from paced_jax.sampling import sampler as sampler_lib

GiB = 1 << 30

_VARIANT_SUFFIXES = ("-Instruct", "-GRPO", "-Base", "-it")

# TPU generations: libtpu's name, TensorCores per device in the slice name, per-device HBM, peak bf16.
# v4 / v5p slice names count TensorCores (2 per chip, one megacore device); v5e / v6e count chips.
_TPU = {
    "v4": ("v4", 2, 32 * GiB, 275e12),
    "v5p": ("v5p", 2, 95 * GiB, 459e12),
    "v5e": ("v5e", 1, 16 * GiB, 197e12),
    "v6e": ("v6e", 1, 32 * GiB, 918e12),
}
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


class AOTError(ValueError):
  """The requested target or model cannot be compiled here; the message says what to do."""


# ----------------------------------------------------------------------------- models

def known_architecture(name: str, **overrides: Any) -> model_config.ModelConfig:
  hf = {k: v for k, v in KNOWN_ARCHITECTURES[name].items() if k not in ("tokenizer_vocab", "published_params")}
  return model_config.from_hf_dict(hf, where=f"aot.KNOWN_ARCHITECTURES[{name!r}]", **overrides)


def _known_name(spec: str) -> str | None:
  base = os.path.basename(os.path.normpath(spec))
  for candidate in (base, *(base[:-len(s)] for s in _VARIANT_SUFFIXES if base.endswith(s))):
    for name in KNOWN_ARCHITECTURES:
      if candidate.lower() == name.lower():
        return name
  return None


def resolve_model(spec: str) -> tuple[model_config.ModelConfig, int | None, str]:
  """(config, tokenizer vocabulary or None, where it came from) for a model spec, without weights.

  A directory or file holding config.json wins; then a `tiny:` spec; then a known architecture
  named by the spec or by the last component of its path (/models/Qwen3-1.7B -> Qwen3-1.7B).
  """
  path = spec[:-len("config.json")] if spec.endswith("config.json") else spec
  if path and os.path.isfile(os.path.join(path, "config.json")):
    return model_config.load_model_config(path), None, os.path.join(path, "config.json")
  if spec.startswith("tiny:"):
    from paced_jax.model import tiny as tiny_model
    parts = spec.split(":")[1:]
    family, size = [p or d for p, d in zip(parts + [""] * 2, ("qwen3", "nano"))][:2]
    vocab = len(tiny_model.char_tokenizer())
    return tiny_model.tiny_config(family, size, vocab_size=-(-vocab // 32) * 32), vocab, spec
  if spec == "demo:smollm2":
    spec = "SmolLM2-135M"
  name = _known_name(spec)
  if name is None:
    raise AOTError(f"model {spec!r}: no config.json there and not a known architecture; pass a Hugging Face "
                   f"config.json (--model=/path/to/config.json) or one of {', '.join(KNOWN_ARCHITECTURES)}")
  return known_architecture(name), KNOWN_ARCHITECTURES[name]["tokenizer_vocab"], f"known architecture {name}"


def param_count(cfg: model_config.ModelConfig) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model_lib.abstract_decoder(cfg))))


# ----------------------------------------------------------------------------- targets

@dataclasses.dataclass(frozen=True)
class Target:
  platform: str               # 'tpu' | 'cpu'
  name: str                   # what the user asked for
  description: str
  devices: tuple[Any, ...]
  hbm_bytes: int | None       # per-device memory of the real chip (None: unknown / CPU)
  peak_flops: float | None    # per-device peak bf16 FLOP/s


def tpu_slice(name: str) -> tuple[str, int, int, float]:
  """'v5p-64' -> (libtpu topology 'v5p:2x4x4', devices, HBM bytes per device, peak FLOP/s)."""
  m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
  if m:
    gen, cores = m.group(1), int(m.group(2))
    lib, per_device, hbm, peak = _TPU[gen]
    devices = cores // per_device
    shape = (_TORUS_3D if gen in ("v4", "v5p") else _TORUS_2D).get(devices)
    if shape is None or cores % per_device:
      raise AOTError(f"TPU slice {name!r}: no standard {gen} topology with {devices} devices")
    return f"{lib}:{shape}", devices, hbm, peak
  m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+)+)", name)
  if m:
    lib, _, hbm, peak = _TPU[m.group(1)]
    return name, math.prod(int(d) for d in m.group(2).split("x")), hbm, peak
  raise AOTError(f"TPU slice {name!r}: expected e.g. v5p-64, v5e-256, v6e-64, v4-32 or a libtpu name like v5p:2x4x4")


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def tpu_target(name: str) -> Target:
  topology, n, hbm, peak = tpu_slice(name)
  if not libtpu_available():
    raise AOTError("compiling for a TPU topology needs the libtpu package (no TPU needed); "
                   "bash launch/aot_env.sh makes a venv with it")
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc(topology, "tpu")
  except Exception as e:  # libtpu raises its own runtime error type
    raise AOTError(f"libtpu could not describe topology {topology!r}: {str(e).splitlines()[0]}") from None
  devices = tuple(topo.devices)
  if len(devices) != n:
    raise AOTError(f"topology {topology!r} has {len(devices)} devices, expected {n}")
  return Target("tpu", name, f"{name} = {topology}, {n} x {devices[0].device_kind}", devices, hbm, peak)


def cpu_target(n: int, name: str = "") -> Target:
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise AOTError(f"{n} CPU devices wanted, jax has {len(devices)}: set "
                   f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax is imported")
  label = f"{n} fake CPU devices" + (f" standing in for {name}" if name else "")
  return Target("cpu", name or f"cpu-{n}", label, tuple(devices[:n]), None, None)


def device_count(topology: str) -> int:
  return tpu_slice(topology)[1]


# ----------------------------------------------------------------------------- compile

@dataclasses.dataclass(frozen=True)
class AOTReport:
  target: Target
  model: str
  params: int
  mesh: dict[str, int]
  rows: int
  seq_len: int
  micro_batches: int
  divergence: str
  attention: str               # the implementation the step compiled with (model.attention resolved)
  compute_dtype: str
  remat: bool
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  flops: float | None          # XLA's count for one device's program
  analytic_flops: float        # 6 N D + dense attention, the whole step, all devices
  compile_seconds: float
  resident_bytes: int = 0      # per device, outside this program: the loaded student and the teacher
  notes: tuple[str, ...] = ()

  @property
  def peak_bytes(self) -> int:
    """Live at once on one device: inputs, outputs not aliased to (donated) inputs, temporaries, code."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.generated_code_bytes


def analytic_flops(cfg: model_config.ModelConfig, params: int, rows: int, seq_len: int) -> float:
  """Forward + backward: 6 x params x tokens plus the dense (unmasked) attention matmuls, 12 L T^2 H Dh per row."""
  tokens = rows * seq_len
  attention = 12.0 * cfg.num_layers * rows * seq_len ** 2 * cfg.num_heads * cfg.head_dim
  return 6.0 * params * tokens + attention


def sharded_param_bytes(mcfg: model_config.ModelConfig, mesh: Mesh, rules=mesh_lib.DEFAULT_RULES) -> int:
  """Bytes of one device's shard of a model's parameters (in its param dtype) on `mesh`."""
  state = nnx.state(model_lib.abstract_decoder(mcfg))
  shardings = nnx.to_pure_dict(mesh_lib.state_shardings(state, mesh, rules))
  return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x, s in zip(jax.tree.leaves(nnx.to_pure_dict(state)), jax.tree.leaves(shardings)))


def _mesh(cfg: ExperimentConfig, devices: Sequence[Any]) -> Mesh:
  shape = mesh_lib.mesh_shape(cfg.mesh, len(devices))
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), mesh_lib.AXES, axis_types=(AxisType.Auto,) * 3)


def compile_train_step(cfg: ExperimentConfig, target: Target, *, model: str | None = None, rows: int | None = None,
                       seq_len: int | None = None, divergence: str | None = None) -> AOTReport:
  """Lower and compile the trainer's train step for `cfg` on `target`; nothing is allocated."""
  spec = model or cfg.student
  mcfg, tokenizer_vocab, where = resolve_model(spec)
  mcfg = mcfg.replace(compute_dtype=cfg.model.compute_dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
                     attention=cfg.model.attention)
  t = cfg.train
  rows = rows or t.rows_per_step or t.batch_size
  seq_len = seq_len or t.seq_len
  divergence = divergence or trainer.stage_of(cfg, 0)[1]
  mesh = _mesh(cfg, target.devices)
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if rows % t.micro_batches:
    raise AOTError(f"{rows} rows per step do not split into train.micro_batches={t.micro_batches}")
  notes = []
  if (rows // t.micro_batches) % batch_devices:
    notes.append(f"{rows // t.micro_batches} rows per micro-batch do not divide over data x fsdp = {batch_devices} "
                 f"devices: the micro-batch is not evenly sharded")

  abstract = model_lib.abstract_decoder(mcfg)
  graphdef, abstract_state = nnx.split(abstract)
  params = nnx.to_pure_dict(abstract_state)
  param_shardings = nnx.to_pure_dict(mesh_lib.state_shardings(abstract_state, mesh, cfg.mesh.rules))
  # trainer.step_config reads only these two fields of the loaded student.
  student = types.SimpleNamespace(graphdef=graphdef, valid_vocab=min(mcfg.vocab_size, tokenizer_vocab or mcfg.vocab_size))
  scfg = trainer.step_config(cfg, student, divergence, cfg.pass_rate.sampling.num_samples + 1)
  state = jax.eval_shape(lambda p: ts.init_state(p, scfg, t.seed), params)
  state_sharding = ts.state_shardings(state, param_shardings, mesh, scfg)
  state_in = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding)

  K = cfg.teacher_signal.top_k
  batch_in = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.eval_shape(lambda: ts.Batch.zeros(rows, seq_len, K)), ts.Batch.shardings(mesh))

  step = ts.jit_train_step(scfg, state_sharding, mesh).jitted
  tic = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(state_in, batch_in).compile()
  seconds = time.perf_counter() - tic

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"]) if cost and "flops" in cost else None
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  # The trainer keeps the loaded student (the sampler's and the frozen teacher's weights in
  # self-distillation) and the teacher on the mesh while this step runs.
  resident = sharded_param_bytes(mcfg, mesh, cfg.mesh.rules)
  if cfg.teacher:
    try:
      tcfg = resolve_model(cfg.teacher)[0].replace(param_dtype=cfg.model.param_dtype)
      resident += sharded_param_bytes(tcfg, mesh, cfg.mesh.rules)
    except AOTError:
      notes.append(f"teacher {cfg.teacher!r}: shapes unknown here, its weights are not counted as resident")
  return AOTReport(
      target=target, model=where, params=n_params, mesh=dict(mesh.shape), rows=rows, seq_len=seq_len,
      micro_batches=t.micro_batches, divergence=divergence,
      attention=attention_lib.resolve(mcfg.attention, seq_len, target.platform),
      compute_dtype=mcfg.compute_dtype, remat=mcfg.remat,
      argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      generated_code_bytes=int(mem.generated_code_size_in_bytes), flops=flops,
      analytic_flops=analytic_flops(mcfg, n_params, rows, seq_len), compile_seconds=seconds,
      resident_bytes=resident, notes=tuple(notes))


def _gib(n: float) -> str:
  return f"{n / GiB:8.2f} GiB" if abs(n) >= GiB / 10 else f"{n / (1 << 20):8.2f} MiB"


def _count(n: int) -> str:
  return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def format_report(r: AOTReport) -> str:
  t = r.target
  kind = ("TPU compile (libtpu; the TPU compiler's own numbers)" if t.platform == "tpu" else
          "CPU compile: same program and sharding, but CPU layouts/fusion/scheduling; TPU memory differs")
  lines = [
      f"target:      {t.description}",
      f"kind:        {kind}",
      f"model:       {r.model}, {_count(r.params)} parameters, compute {r.compute_dtype}, remat {r.remat}, "
      f"attention {r.attention}",
      "mesh:        " + " ".join(f"{k}={v}" for k, v in r.mesh.items()),
      f"step:        {r.rows} rows x {r.seq_len} tokens, {r.micro_batches} micro-batches, divergence {r.divergence}",
      f"compile:     {r.compile_seconds:.1f} s",
      "per device:",
      f"  arguments       {_gib(r.argument_bytes)}   (train state shard + batch shard)",
      f"  outputs         {_gib(r.output_bytes)}   ({_gib(r.alias_bytes).strip()} aliased to donated inputs)",
      f"  temporaries     {_gib(r.temp_bytes)}",
      f"  generated code  {_gib(r.generated_code_bytes)}",
      f"  peak estimate   {_gib(r.peak_bytes)}   (arguments + outputs - aliased + temporaries + code)",
  ]
  lines.append(f"  + resident      {_gib(r.resident_bytes)}   (loaded student + teacher weights, outside the step)")
  total = r.peak_bytes + r.resident_bytes
  if t.hbm_bytes:
    verdict = "fits" if total <= t.hbm_bytes else "DOES NOT FIT"
    lines.append(f"  HBM per device  {_gib(t.hbm_bytes)}   -> {verdict} ({100 * total / t.hbm_bytes:.0f}% of HBM)")
  n = len(t.devices)
  analytic = f"analytic 6ND + dense attention {r.analytic_flops:.3e} for the step ({r.analytic_flops / n:.3e} per device)"
  if r.flops is not None:
    # XLA's cost analysis counts a while-loop body once: the layer scan and the micro-batch scan
    # make its number roughly L x M times too small.
    lines.append(f"FLOPs:       {analytic}; XLA counts {r.flops:.3e} per device, loop bodies once")
  else:
    lines.append(f"FLOPs:       {analytic}; XLA gave no count")
  if t.peak_flops:
    lines.append(f"time bound:  >= {r.analytic_flops / n / t.peak_flops:.2f} s per step at peak bf16 "
                 f"({t.peak_flops / 1e12:.0f} TFLOP/s per device; remat recompute not included)")
  lines += [f"note:        {note}" for note in r.notes]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- the sampler's decode step

@dataclasses.dataclass(frozen=True)
class DecodeReport:
  target: Target
  model: str
  sampling: SamplingConfig
  rows: int                   # decode rows, all devices
  rows_per_device: int
  slots: int                  # cache slots a row holds at full length (prompt bucket + max_new_tokens)
  window: int                 # slots a paged step reads per row (its rows' longest length, bucketed)
  pool_tokens: int            # paged: tokens of cache one device's page pool holds
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


def compile_decode_step(cfg: ExperimentConfig, target: Target, *, model: str | None = None,
                        sampling: SamplingConfig | None = None, prompt_len: int = 512, window: int | None = None,
                        replicate_weights: bool | None = None) -> DecodeReport:
  """Lower and compile one decode chunk of the sampler (pass-rate settings by default) with every
  row at the prompt bucket of `prompt_len` + max_new_tokens slots; a paged cache is read through
  `window` slots per row (default: all of them, the longest rows' cost). Decoding weights are
  replicated over the batch axes when that copy takes at most a quarter of the chip's HBM."""
  mcfg, tokenizer_vocab, where = resolve_model(model or cfg.student)
  mcfg = mcfg.replace(compute_dtype=cfg.model.compute_dtype, param_dtype=cfg.model.param_dtype)
  sc = sampling or cfg.pass_rate.sampling
  mesh = _mesh(cfg, target.devices)
  abstract_state = nnx.state(model_lib.abstract_decoder(mcfg))
  shardings = nnx.to_pure_dict(mesh_lib.state_shardings(abstract_state, mesh, cfg.mesh.rules))
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_state), shardings)
  if replicate_weights is None:
    whole = param_count(mcfg) * jnp.dtype(mcfg.compute_dtype).itemsize / mesh.shape["tensor"]
    replicate_weights = bool(target.hbm_bytes and whole <= target.hbm_bytes / 4)
  valid_vocab = min(mcfg.vocab_size, tokenizer_vocab or mcfg.vocab_size)
  sampler = sampler_lib.Sampler(mcfg, params, mesh, stop_ids=(0,), valid_vocab=valid_vocab,
                                replicate_weights=replicate_weights)
  rows = sampler.rows(sc, 1 << 30)
  slots, pages = sampler._bucket(prompt_len, sc) + sc.max_new_tokens, 0
  if sc.kv_cache == "paged":
    slots = -(-slots // sc.page_size) * sc.page_size
    pages = sampler.pages_per_device(sc, rows, slots // sc.page_size)
    window = min(window or slots, slots)
  state = sampler.abstract_state(rows, slots, sc, pages)
  tic = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = sampler_lib.decode_chunk.lower(sampler.spec, sc.compiled_part(), window or 0, sampler.params,
                                              state).compile()
  seconds = time.perf_counter() - tic
  mem = compiled.memory_analysis()
  return DecodeReport(
      target=target, model=where, sampling=sc, rows=rows, rows_per_device=rows // sampler.row_multiple, slots=slots,
      window=window or slots, pool_tokens=pages * sc.page_size, cache_bytes=_device_bytes(state.cache[:2]),
      weights_bytes=_device_bytes(sampler.params), replicated=replicate_weights,
      argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      generated_code_bytes=int(mem.generated_code_size_in_bytes), compile_seconds=seconds)


def format_decode_report(r: DecodeReport) -> str:
  sc = r.sampling
  lines = [
      f"decode step: {r.model} on {r.target.description}",
      f"  rows          {r.rows_per_device} per device ({r.rows} in all), {sc.chunk_steps} steps per chunk, "
      f"{r.slots} slots per row at full length",
      f"  weights       {_gib(r.weights_bytes)}   (decoding copy, "
      f"{'replicated over the batch axes' if r.replicated else 'sharded like the trained weights'})",
  ]
  if sc.kv_cache == "paged":
    lines.append(f"  cache         {_gib(r.cache_bytes)}   (paged: a pool of {r.pool_tokens} tokens per device, "
                 f"{sc.page_size} per page; a row holds the pages of its length, {r.slots} at most; "
                 f"this step reads {r.window} slots per row)")
  else:
    lines.append(f"  cache         {_gib(r.cache_bytes)}   (dense: every row holds {r.slots} slots)")
  lines += [
      f"  compile       {r.compile_seconds:.1f} s",
      f"  arguments     {_gib(r.argument_bytes)}   (weights + decode state, cache included)",
      f"  temporaries   {_gib(r.temp_bytes)}   ({100 * r.temp_bytes / max(r.cache_bytes, 1):.1f}% of the cache)",
      f"  peak estimate {_gib(r.peak_bytes)}",
  ]
  if r.target.hbm_bytes:
    lines.append(f"  HBM per device {_gib(r.target.hbm_bytes)}   -> "
                 f"{100 * r.peak_bytes / r.target.hbm_bytes:.0f}% of HBM")
  return "\n".join(lines)
