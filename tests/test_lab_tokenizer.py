"""The lab tokenizer: exact round trip of lab text, saved and loaded through transformers."""

from __future__ import annotations

import pytest
import transformers

from paced_jax.problems import lab_arithmetic as lab_tasks
from paced_jax.lab import tokenizer as lab_tokenizer
from paced_jax.model import tokenization
from stage_fixtures import load_config_file


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  return lab_tokenizer.save(str(tmp_path_factory.mktemp("lab_tok")))


def _expr(problem) -> str:
  return problem.prompt.removeprefix("Compute ").removesuffix(".")


def _texts():
  c = load_config_file("lab.py")
  texts = []
  for p in lab_tasks.generate(120, seed=0, split="train"):
    texts += [p.prompt, p.solution, lab_tasks.terse_solution(_expr(p)), c.experiment.prompts.solution_template.format(problem=p.prompt, solution=p.solution),
              c.experiment.prompts.answer_only_template.format(problem=p.prompt, answer=p.answer)]
  return texts


def test_round_trip_without_unknown_tokens():
  tok = lab_tokenizer.build()
  unk = tok.convert_tokens_to_ids(lab_tokenizer.UNK)
  for text in _texts():
    ids = tok.encode(text, add_special_tokens=False)
    assert unk not in ids, text
    assert tok.decode(ids) == text


def test_digits_split_words_whole():
  tok = lab_tokenizer.build()
  assert tok.tokenize("Compute 37*6+15.") == ["Compute", " ", "3", "7", "*", "6", "+", "1", "5", "."]
  assert tok.tokenize("Answer: 222") == ["Answer", ":", " ", "2", "2", "2"]
  # A word outside the vocabulary is <unk>, not silently split: templates must use known words.
  assert tok.tokenize("Compute banana") == ["Compute", " ", lab_tokenizer.UNK]
  assert tok.encode("banana", add_special_tokens=False) == [tok.convert_tokens_to_ids(lab_tokenizer.UNK)]
  assert len(tok) < 48 and lab_tokenizer.embedding_rows(tok) % 8 == 0


def test_saved_and_loaded_through_transformers(saved):
  built = lab_tokenizer.build()
  for loaded in (transformers.AutoTokenizer.from_pretrained(saved, local_files_only=True),
                 transformers.PreTrainedTokenizerFast(tokenizer_file=f"{saved}/tokenizer.json")):
    for text in _texts()[:40]:
      assert loaded.encode(text, add_special_tokens=False) == built.encode(text, add_special_tokens=False)
  tok = tokenization.load_tokenizer(saved)
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
  ids = tokenization.render_chat(tok, "Compute 1+2.")
  assert tok.decode(ids) == "<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n"
  assert tokenization.stop_ids(tok) == (tok.convert_tokens_to_ids("<|endoftext|>"), tok.eos_token_id)
  assert tokenization.pad_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>")
  response = tok.encode("1+2=3\nAnswer: 3", add_special_tokens=False) + [tok.eos_token_id]
  assert lab_tasks.grade(tok.decode(response, skip_special_tokens=True), "3")
