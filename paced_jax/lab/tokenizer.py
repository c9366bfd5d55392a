"""The method lab's tokenizer: a few dozen word-level tokens, built with `tokenizers`.

Every digit is its own token (arithmetic is learnt digit by digit), each punctuation mark and
whitespace character too, and the handful of words the lab's prompts and solutions use are one
token each, so a problem with its worked solution fits in about 60 tokens. Anything else maps to
`<unk>`, which the tests check never happens on lab text. Saved as a Hugging Face
`tokenizer.json` with ChatML specials and template (as tiny_model.char_tokenizer), so every
pipeline stage loads it with AutoTokenizer like any downloaded tokenizer.
"""

from __future__ import annotations

import os
import string

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers

from paced_jax.model import tiny as tiny_model

UNK = "<unk>"
# The words of lab prompts (lab_arithmetic.PROMPT), solutions, the teacher's context templates
# (configs/lab.py) and the chat roles. A template using another word would tokenize it as <unk>.
WORDS = ("Compute", "Answer", "Solution", "Hint", "answer", "is", "user", "assistant", "system")
SYMBOLS = " \n+-*=:.,?()"
# A word, one digit, or one other character: words stay whole, numbers split into digits.
_PIECES = r"[A-Za-z]+|[0-9]|[\s\S]"


def vocabulary() -> dict[str, int]:
  """Token -> id: ChatML specials first (ids 0-2, as the tiny models), then <unk>, digits, symbols, words."""
  tokens = [*tiny_model.SPECIALS, UNK, *string.digits, *SYMBOLS, *WORDS]
  return {tok: i for i, tok in enumerate(tokens)}


def build() -> transformers.PreTrainedTokenizerFast:
  vocab = vocabulary()
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(_PIECES), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([*tiny_model.SPECIALS, UNK])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=UNK, bos_token=None)
  fast.chat_template = tiny_model.CHATML
  return fast


def save(directory: str) -> str:
  """Write tokenizer.json (+ config, template) to `directory`; returns it."""
  os.makedirs(directory, exist_ok=True)
  build().save_pretrained(directory)
  return directory


def embedding_rows(tokenizer) -> int:
  """Embedding rows of a lab model: the vocabulary rounded up to a multiple of 8."""
  return -(-len(tokenizer) // 8) * 8
