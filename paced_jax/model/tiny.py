"""Small self-contained models: a character-level chat tokenizer and random tiny decoders.

They make every stage runnable in seconds without downloads (the `tiny` config, tests, the
synthetic method lab). The tokenizer is a real Hugging Face `tokenizer.json` with a ChatML
template, so the rest of the system treats it exactly like a downloaded one.
"""

from __future__ import annotations

import os
import shutil
import string

import tokenizers
import transformers
from flax import nnx
from tokenizers import decoders, models, pre_tokenizers

from paced_jax import artifacts
from paced_jax.model import hf_checkpoint
from paced_jax.model import decoder as model_lib
from paced_jax.model.config import ModelConfig, RopeConfig

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARS = string.digits + string.ascii_letters + " \n+-*/=().,:?!'\"\\{}[]<>^_$%&#;|~@"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

SIZES = {
    # name: (hidden, intermediate, layers, heads, kv heads)
    "nano": (64, 128, 2, 4, 2),
    "micro": (128, 256, 4, 4, 2),
    "small": (256, 512, 6, 8, 4),
}


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
  """One token per character, ChatML specials first (ids 0, 1, 2)."""
  vocab = {tok: i for i, tok in enumerate(SPECIALS)}
  for ch in CHARS:
    vocab.setdefault(ch, len(vocab))
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
  tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens(list(SPECIALS))
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
      bos_token=None)
  fast.chat_template = CHATML
  return fast


def tiny_config(family: str = "qwen3", size: str = "nano", vocab_size: int = 128) -> ModelConfig:
  if size not in SIZES:
    raise ValueError(f"unknown tiny size {size!r}; available: {', '.join(SIZES)}")
  if family not in ("llama", "qwen2", "qwen3"):
    raise ValueError(f"unknown tiny family {family!r}; available: llama, qwen2, qwen3")
  d, f, layers, heads, kv = SIZES[size]
  return ModelConfig(
      model_type=family, vocab_size=vocab_size, hidden_size=d, intermediate_size=f, num_layers=layers,
      num_heads=heads, num_kv_heads=kv, head_dim=d // heads, rms_norm_eps=1e-6, rope=RopeConfig(theta=1e4),
      tie_word_embeddings=True, qkv_bias=family == "qwen2", qk_norm=family == "qwen3",
      max_position_embeddings=2048, bos_token_id=None, eos_token_ids=(2,))


def ensure_tiny_model(directory: str, family: str = "qwen3", size: str = "nano", seed: int = 0) -> str:
  """Write a random tiny model + char tokenizer as a Hugging Face directory (once)."""
  if os.path.exists(os.path.join(directory, artifacts.MANIFEST)):
    return directory
  tokenizer = char_tokenizer()
  cfg = tiny_config(family, size, vocab_size=-(-len(tokenizer) // 32) * 32)  # padded rows, like Qwen
  model = model_lib.init_decoder(cfg, seed)
  tok_dir = directory + ".tokenizer"
  tokenizer.save_pretrained(tok_dir)
  try:
    hf_checkpoint.export_hf(nnx.state(model), cfg, directory, tokenizer_dir=tok_dir)
  finally:
    shutil.rmtree(tok_dir, ignore_errors=True)
  artifacts.write_manifest(directory, "hf_model", source=f"tiny:{family}:{size}:{seed}")
  return directory
