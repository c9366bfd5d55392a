"""A model loaded onto the mesh together with its tokenizer and identity."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from paced_jax.model import gguf as gguf_import, hf_checkpoint, tiny as tiny_model, tokenization
from paced_jax.config import ModelOptions
from paced_jax.model.config import ModelConfig


@dataclasses.dataclass
class LoadedModel:
  model_dir: str
  cfg: ModelConfig
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer: Any
  fingerprint: str
  mesh: Mesh

  @property
  def tokenizer_fingerprint(self) -> str:
    return tokenization.tokenizer_fingerprint(self.tokenizer)

  @property
  def valid_vocab(self) -> int:
    return min(self.cfg.vocab_size, tokenization.valid_vocab_size(self.tokenizer))

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return tokenization.stop_ids(self.tokenizer, self.cfg.eos_token_ids)

  @property
  def pad_id(self) -> int:
    return tokenization.pad_id(self.tokenizer)


def resolve_model_dir(spec: str) -> str:
  """A model spec as a local directory.

  `demo:smollm2` converts the bundled GGUF once; `tiny:<family>:<size>:<seed>` writes a random
  tiny model with a character tokenizer once (both cached under $PACED_JAX_CACHE).
  """
  if spec == "demo:smollm2":
    return gguf_import.ensure_demo_model()
  if spec.startswith("tiny:"):
    parts = spec.split(":")[1:]
    family, size, seed = [p or d for p, d in zip(parts + [""] * 3, ("qwen3", "nano", "0"))]
    directory = os.path.join(gguf_import.default_cache_dir(), f"tiny-{family}-{size}-{seed}")
    return tiny_model.ensure_tiny_model(directory, family, size, int(seed))
  if spec.startswith("demo:"):
    raise ValueError(f"unknown demo model {spec!r}; available: demo:smollm2")
  if not os.path.isdir(spec):
    raise FileNotFoundError(f"model directory {spec!r} does not exist")
  return spec


def load(spec: str, mesh: Mesh, options: ModelOptions = ModelOptions()) -> LoadedModel:
  model_dir = resolve_model_dir(spec)
  cfg, graphdef, params = hf_checkpoint.load_model(
      model_dir, mesh, compute_dtype=options.compute_dtype, param_dtype=options.param_dtype, remat=options.remat,
      attention=options.attention)
  return LoadedModel(model_dir, cfg, graphdef, params, tokenization.load_tokenizer(model_dir),
                     hf_checkpoint.model_fingerprint(model_dir), mesh)


def load_student_and_teacher(cfg) -> tuple[LoadedModel, LoadedModel]:
  """Both models of an ExperimentConfig on its mesh; the teacher is the student itself (its
  frozen initial weights) unless `cfg.teacher` names another model."""
  from paced_jax import mesh as mesh_lib  # deferred: keeps this module's imports minimal
  mesh = mesh_lib.make_mesh(cfg.mesh)
  student = load(cfg.student, mesh, cfg.model)
  return student, (student if not cfg.teacher else load(cfg.teacher, mesh, cfg.model))
