"""Tiny random Hugging Face checkpoints of every supported family, built locally (no hub)."""

from __future__ import annotations

import os

import torch
import transformers

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              bos_token_id=1, eos_token_id=2)

FAMILIES = {
    # SmolLM2 is a Llama with tied embeddings and rope_theta 1e5.
    "smollm2": (transformers.LlamaConfig, dict(tie_word_embeddings=True, rope_theta=1e5)),
    "llama3": (transformers.LlamaConfig, dict(
        tie_word_embeddings=False, rope_theta=5e5, max_position_embeddings=4096,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64))),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=False, rope_theta=1e6)),
    "qwen2_tied": (transformers.Qwen2Config, dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3": (transformers.Qwen3Config, dict(tie_word_embeddings=True, head_dim=16, rope_theta=1e6)),
}


def make_tiny_model(family: str, directory: str, seed: int = 0, **overrides) -> str:
  """Save a random tiny model of `family` to `directory`; returns the directory."""
  config_cls, extra = FAMILIES[family]
  config = config_cls(**{**COMMON, **extra, **overrides})
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
  # Random init leaves norms at 1 and biases at 0; perturb them so parity covers them too.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith(".bias"):
        p.add_(0.1 * torch.randn_like(p))
  os.makedirs(directory, exist_ok=True)
  model.save_pretrained(directory)
  return directory
