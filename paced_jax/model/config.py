"""Decoder configuration read from a Hugging Face `config.json` (Llama 3, Qwen2/2.5, Qwen3, SmolLM2).

The file is read as plain JSON: no `AutoConfig`, so nothing a checkpoint ships is ever executed.
Both the transformers<5 layout (`rope_theta`, `rope_scaling`) and the transformers>=5 layout
(`rope_parameters`) are accepted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ModelConfigError(ValueError):
  """A config.json this decoder cannot represent faithfully."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  theta: float = 10000.0
  kind: str = "default"  # default | linear | llama3
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_positions: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static shape and numerics of one decoder; hashable, so it can be a jit static argument."""
  model_type: str
  vocab_size: int          # rows of the embedding (may exceed the tokenizer's vocabulary)
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float
  rope: RopeConfig
  tie_word_embeddings: bool
  qkv_bias: bool = False    # Qwen2 / Qwen2.5, or Llama with attention_bias
  o_bias: bool = False      # Llama with attention_bias
  mlp_bias: bool = False
  qk_norm: bool = False     # Qwen3
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  # Numerics chosen by the run, not the checkpoint.
  compute_dtype: str = "float32"   # activations and matmul inputs
  param_dtype: str = "float32"     # master weights
  remat: bool = False              # rematerialise each layer in the backward pass
  attention: str = "auto"          # training / scoring attention (config.ModelOptions.attention)

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "ModelConfig":
    d = dict(d)
    d["rope"] = RopeConfig(**d["rope"])
    d["eos_token_ids"] = tuple(d["eos_token_ids"])
    return cls(**d)


def _require(hf: dict, key: str, where: str) -> Any:
  if key not in hf or hf[key] is None:
    raise ModelConfigError(f"{where}: required field {key!r} is missing")
  return hf[key]


def _rope_from_hf(hf: dict, where: str) -> RopeConfig:
  params = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling") or {}
  params = {**scaling, **params}
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  kind = params.get("rope_type", params.get("type", "default")) or "default"
  if kind not in SUPPORTED_ROPE_TYPES:
    raise ModelConfigError(
        f"{where}: field 'rope_scaling.rope_type' is {kind!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
  return RopeConfig(
      theta=float(theta), kind=kind, factor=float(params.get("factor", 1.0)),
      low_freq_factor=float(params.get("low_freq_factor", 1.0)),
      high_freq_factor=float(params.get("high_freq_factor", 4.0)),
      original_max_positions=int(params.get("original_max_position_embeddings", 8192)))


def from_hf_dict(hf: dict, where: str = "config.json", **overrides: Any) -> ModelConfig:
  """Build a ModelConfig from a parsed Hugging Face config dict; `where` names it in errors."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ModelConfigError(
        f"{where}: field 'model_type' is {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ModelConfigError(f"{where}: field 'hidden_act' is {act!r}; only 'silu' is supported")
  if hf.get("use_sliding_window"):
    raise ModelConfigError(f"{where}: field 'use_sliding_window' is true; sliding-window attention is not supported")
  hidden = int(_require(hf, "hidden_size", where))
  heads = int(_require(hf, "num_attention_heads", where))
  kv_heads = int(hf.get("num_key_value_heads") or heads)
  if heads % kv_heads:
    raise ModelConfigError(f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
  head_dim = int(hf.get("head_dim") or hidden // heads)
  eos = hf.get("eos_token_id")
  eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
  attention_bias = bool(hf.get("attention_bias", False))
  cfg = ModelConfig(
      model_type=model_type,
      vocab_size=int(_require(hf, "vocab_size", where)),
      hidden_size=hidden,
      intermediate_size=int(_require(hf, "intermediate_size", where)),
      num_layers=int(_require(hf, "num_hidden_layers", where)),
      num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope=_rope_from_hf(hf, where),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=model_type == "qwen2" or attention_bias,
      o_bias=model_type != "qwen2" and attention_bias,
      mlp_bias=bool(hf.get("mlp_bias", False)),
      qk_norm=model_type == "qwen3",
      max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_ids=eos_ids,
  )
  return cfg.replace(**overrides)


def load_model_config(model_dir: str, **overrides: Any) -> ModelConfig:
  """Read `model_dir/config.json`; errors name the file and field."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.isfile(path):
    raise ModelConfigError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
  try:
    with open(path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ModelConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
  return from_hf_dict(hf, where=path, **overrides)


def to_hf_dict(cfg: ModelConfig) -> dict:
  """The Hugging Face config.json for `cfg` (used by export)."""
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[cfg.model_type]
  rope: dict[str, Any] = {"rope_type": cfg.rope.kind, "rope_theta": cfg.rope.theta}
  if cfg.rope.kind in ("linear", "llama3"):
    rope["factor"] = cfg.rope.factor
  if cfg.rope.kind == "llama3":
    rope.update(low_freq_factor=cfg.rope.low_freq_factor, high_freq_factor=cfg.rope.high_freq_factor,
                original_max_position_embeddings=cfg.rope.original_max_positions)
  hf: dict[str, Any] = {
      "architectures": [arch], "model_type": cfg.model_type, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
      "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": cfg.rope.theta,
      "rope_parameters": rope, "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) != 1 else cfg.eos_token_ids[0],
      "torch_dtype": "float32",
  }
  if cfg.rope.kind != "default":
    hf["rope_scaling"] = rope
  if cfg.model_type == "llama":
    hf.update(attention_bias=cfg.o_bias, mlp_bias=cfg.mlp_bias)
  if cfg.model_type == "qwen3":
    hf["attention_bias"] = cfg.qkv_bias
  if cfg.model_type in ("qwen2", "qwen3"):
    hf["use_sliding_window"] = False
  return hf
