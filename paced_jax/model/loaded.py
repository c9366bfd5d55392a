"""A model loaded onto the mesh together with its tokenizer and identity."""

from __future__ import annotations

import dataclasses
import os
import re
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


# A hub model id, `org/name` or `name`, optionally `@revision`; anything else is a local path.
HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w./-]+)?$")
# What a download fetches: config, weights, tokenizer and chat template; not .bin / .pt copies.
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*")


class ModelNotFoundError(FileNotFoundError):
  """A model spec is neither a local directory nor a hub id available locally (or downloadable)."""


def _hub_model_dir(spec: str, allow_download: bool) -> str:
  """A hub id's snapshot directory in the Hugging Face cache ($HF_HUB_CACHE, read at call time)."""
  import huggingface_hub  # deferred: only hub ids need it
  from huggingface_hub import constants, errors
  repo_id, _, revision = spec.partition("@")
  cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
  offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
  fetch = f"fetch it with `hf download {repo_id}`"
  fetch += "" if allow_download else " or set --config.model.allow_download=True"
  try:
    directory = huggingface_hub.snapshot_download(repo_id, revision=revision or None, cache_dir=cache_dir,
                                                  local_files_only=offline or not allow_download,
                                                  allow_patterns=list(HUB_FILES))
  except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.RepositoryNotFoundError,
          errors.RevisionNotFoundError, errors.HfHubHTTPError, OSError) as e:
    if not allow_download:
      where = f"not in the Hugging Face cache ({cache_dir})"
    elif offline:
      where = f"not in the Hugging Face cache ({cache_dir}) and HF_HUB_OFFLINE is set"
    else:
      where = f"not in the Hugging Face cache ({cache_dir}) and the download failed ({type(e).__name__}: no network?)"
    raise ModelNotFoundError(f"model {spec!r}: not a local directory, {where}; {fetch}") from None
  if not os.path.exists(os.path.join(directory, "config.json")):
    raise ModelNotFoundError(f"model {spec!r}: the cached snapshot {directory} has no config.json (an interrupted "
                             f"download?); {fetch}")
  return directory


def resolve_model_dir(spec: str, allow_download: bool = False) -> str:
  """A model spec as a local directory.

  `demo:smollm2` converts the bundled GGUF once; `tiny:<family>:<size>:<seed>` writes a random
  tiny model with a character tokenizer once (both cached under $PACED_JAX_CACHE). A spec that is
  not a directory but looks like a hub id (`Qwen/Qwen3-1.7B`, `org/name@revision`) is looked up in
  the local Hugging Face cache, and downloaded only when `allow_download`.
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
  if os.path.isdir(spec):
    return spec
  if HUB_ID_RE.match(spec) and not spec.startswith("."):
    return _hub_model_dir(spec, allow_download)
  raise ModelNotFoundError(f"model directory {spec!r} does not exist")


def load(spec: str, mesh: Mesh, options: ModelOptions = ModelOptions()) -> LoadedModel:
  model_dir = resolve_model_dir(spec, options.allow_download)
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
