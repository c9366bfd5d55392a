"""A model loaded onto the mesh together with its tokenizer and identity."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from paced_jax import hf_checkpoint, tokenization
from paced_jax.config import ModelOptions
from paced_jax.model_config import ModelConfig
from paced_jax.sampler import Sampler


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

  def sampler(self, params: nnx.State | None = None) -> Sampler:
    return Sampler(self.cfg, self.params if params is None else params, self.mesh,
                   stop_ids=tokenization.stop_ids(self.tokenizer, self.cfg.eos_token_ids),
                   valid_vocab=self.valid_vocab, pad_id=tokenization.pad_id(self.tokenizer))


def load(spec: str, mesh: Mesh, options: ModelOptions = ModelOptions()) -> LoadedModel:
  model_dir = hf_checkpoint.resolve_model_dir(spec)
  cfg, graphdef, params = hf_checkpoint.load_model(
      model_dir, mesh, compute_dtype=options.compute_dtype, param_dtype=options.param_dtype, remat=options.remat)
  return LoadedModel(model_dir, cfg, graphdef, params, tokenization.load_tokenizer(model_dir),
                     hf_checkpoint.model_fingerprint(model_dir), mesh)


def load_student_and_teacher(cfg) -> tuple[LoadedModel, LoadedModel]:
  """Both models of an ExperimentConfig on its mesh; the teacher is the student itself (its
  frozen initial weights) unless `cfg.teacher` names another model."""
  from paced_jax import mesh as mesh_lib  # deferred: keeps this module's imports minimal
  mesh = mesh_lib.make_mesh(cfg.mesh)
  student = load(cfg.student, mesh, cfg.model)
  return student, (student if not cfg.teacher else load(cfg.teacher, mesh, cfg.model))
