"""Tokenizer and chat-template rendering from a local Hugging Face model directory."""

from __future__ import annotations

import functools
import os
from typing import Sequence

import transformers

from paced_jax import artifacts


class TokenizerError(ValueError):
  """The model directory's tokenizer cannot be used as configured."""


@functools.lru_cache(maxsize=8)
def load_tokenizer(model_dir: str) -> transformers.PreTrainedTokenizerBase:
  """AutoTokenizer from a local directory only; remote code is never trusted."""
  if not os.path.isdir(model_dir):
    raise TokenizerError(f"{model_dir}: not a directory")
  try:
    return transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
  except (OSError, ValueError) as e:
    raise TokenizerError(f"{model_dir}: cannot load a tokenizer ({e})") from None


def tokenizer_fingerprint(tokenizer) -> str:
  """Hash of the vocabulary and special tokens: equal fingerprints mean interchangeable ids."""
  return artifacts.fingerprint({"vocab": sorted(tokenizer.get_vocab().items()),
                                "special": sorted(map(str, tokenizer.all_special_tokens))})


def pad_id(tokenizer) -> int:
  """An id to fill padding with that is not the EOS / chat-turn end.

  SmolLM2 declares `<|im_end|>` as pad, and it occurs inside every chat prompt; padding is
  therefore tracked by explicit lengths and masks, and filled with a harmless id.
  """
  for token in ("<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>"):
    tid = tokenizer.convert_tokens_to_ids(token)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id:
      return tid
  return 0


def stop_ids(tokenizer, model_eos_ids: Sequence[int] = ()) -> tuple[int, ...]:
  """Ids that end a response: the tokenizer's EOS, the model's EOS ids, chat turn ends."""
  ids = set(model_eos_ids)
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"):
    tid = tokenizer.convert_tokens_to_ids(token)
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and token in tokenizer.get_vocab():
      ids.add(tid)
  return tuple(sorted(ids))


def render_chat(tokenizer, user_text: str, system: str | None = None, enable_thinking: bool = False) -> list[int]:
  """Token ids of a one-turn chat prompt with the generation prompt appended.

  `enable_thinking=False` is passed to the template (Qwen3 honours it; others ignore it).
  Without a chat template, the plain text is used.
  """
  messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
  if not getattr(tokenizer, "chat_template", None):
    return tokenizer.encode(user_text, add_special_tokens=True)
  text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                       enable_thinking=enable_thinking)
  return tokenizer.encode(text, add_special_tokens=False)


def valid_vocab_size(tokenizer) -> int:
  """Ids below this are real tokens; embedding rows beyond it are padding and never sampled."""
  return len(tokenizer)
