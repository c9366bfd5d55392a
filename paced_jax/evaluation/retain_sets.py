"""Retain sets for the forgetting check: multiple-choice questions, and how they are shown.

A retain set is `builtin:arith_mc[:n=..,seed=..]` (generated, no download) or an MMLU-format
file (.csv, or any problem source: .jsonl / .json / .parquet, a glob of shards, a datasets
directory; optional `:n=..`): rows with `question`, `choices` (a
list) or columns A, B, C, D, and `answer` as index 0-3 or letter; headerless csv is read as
MMLU's own question,A,B,C,D,answer. `:format=letter|cloze` picks how questions are shown.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
from typing import Any, Iterator

from paced_jax import artifacts
from paced_jax.evaluation.benchmarks import BenchmarkError, split_spec
from paced_jax.problems.sources import ProblemFileError, content_sha256, read_rows, source_stem

LETTERS = "ABCDEFGHIJ"


@dataclasses.dataclass(frozen=True)
class ChoiceFormat:
  """How a question is shown (`prompt`, the user turn) and each choice scored (`continuation`)."""
  prompt: str
  continuation: str


# letter: MMLU style, choices listed and answered by letter (needs a model that follows the list;
#   SmolLM2-135M picks "A" for 77 of 100 arith_mc questions, 29% accuracy).
# cloze: the question alone, each choice scored as a stated answer (SmolLM2-135M: 73% on arith_mc).
FORMATS = {
    "letter": ChoiceFormat("{question}\n\n{choices}\n\nAnswer with the letter of the correct choice.",
                           "{letter}. {choice}"),
    "cloze": ChoiceFormat("{question}", "The answer is {choice}."),
}
OPTIONS = ("n", "seed", "format")


class RetainFileError(ValueError):
  """A retain-set file is unreadable or has a bad row; the message names file, line/row and field."""


@dataclasses.dataclass(frozen=True)
class MCQuestion:
  id: str
  question: str
  choices: tuple[str, ...]
  answer: int                   # index into choices
  subject: str | None = None


def _csv_rows(path: str) -> Iterator[tuple[str, dict]]:
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = None
    for record in reader:
      if not any(cell.strip() for cell in record):
        continue
      if header is None:
        names = [c.strip() for c in record]
        if "question" in (n.lower() for n in names):
          header = names
          continue
        header = ["question", "A", "B", "C", "D", "answer"]  # MMLU's own headerless csv
      if len(record) != len(header):
        raise RetainFileError(f"{path}: line {reader.line_num}: expected {len(header)} columns "
                              f"({', '.join(header)}), got {len(record)}")
      yield f"line {reader.line_num}", dict(zip(header, record))


def _question(row: Any, where: str, index: int, stem: str) -> MCQuestion:
  if not isinstance(row, dict):
    raise RetainFileError(f"{where}: expected an object, got {type(row).__name__}")
  lower = {str(k).lower(): v for k, v in row.items()}
  has = ", ".join(map(repr, sorted(row)))
  question = lower.get("question")
  if not isinstance(question, str) or not question.strip():
    raise RetainFileError(f"{where}: field 'question': expected a non-empty string (the row has {has})")
  if lower.get("choices") is not None:
    choices = lower["choices"]
    if not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(LETTERS):
      raise RetainFileError(f"{where}: field 'choices': expected a list of 2 to {len(LETTERS)} strings, "
                            f"got {choices!r:.80}")
  elif all(letter in lower for letter in "abcd"):
    choices = [lower[letter] for letter in "abcd"]
  else:
    raise RetainFileError(f"{where}: needs a 'choices' list or columns A, B, C, D (the row has {has})")
  if any(c is None or isinstance(c, (dict, list, bool)) or not str(c).strip() for c in choices):
    raise RetainFileError(f"{where}: a choice is empty or not text: {choices!r:.120}")
  choices = tuple(str(c).strip() for c in choices)
  raw = lower.get("answer")
  answer = None
  if isinstance(raw, int) and not isinstance(raw, bool):
    answer = raw
  elif isinstance(raw, str) and raw.strip().isdigit():
    answer = int(raw.strip())
  elif isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS:
    answer = LETTERS.index(raw.strip().upper())
  if answer is None or not 0 <= answer < len(choices):
    raise RetainFileError(f"{where}: field 'answer': expected an index 0-{len(choices) - 1} or a letter "
                          f"A-{LETTERS[len(choices) - 1]}, got {raw!r:.40}")
  raw_id = lower.get("id")
  qid = str(raw_id).strip() if raw_id is not None and str(raw_id).strip() else f"{stem}-{index}"
  subject = lower.get("subject")
  return MCQuestion(qid, question.strip(), choices, answer, str(subject) if subject is not None else None)


def load_retain_file(path: str) -> list[MCQuestion]:
  """An MMLU-format multiple-choice source; errors name the file, line (jsonl, csv) or row, and field."""
  if path.endswith(".csv"):
    if not os.path.isfile(path):
      raise RetainFileError(f"{path}: no such file")
    rows = ((f"{path}: {where}", row) for where, row in _csv_rows(path))
  else:
    rows = read_rows(path)
  stem = source_stem(path)
  try:
    return [_question(row, where, i, stem) for i, (where, row) in enumerate(rows)]
  except ProblemFileError as e:  # the shared reader's errors (bad JSON, parquet, no file) keep their text
    raise RetainFileError(str(e)) from None


def arith_mc(n: int = 100, seed: int = 0) -> list[MCQuestion]:
  """Times-table questions (2..12 x 2..12) with 3 near-miss numeric distractors; fixed by (n, seed).

  Multiplication, not the addition / subtraction the demo trains on, so the set measures what
  training might erode rather than what it teaches.
  """
  pool = [(a, b) for a in range(2, 13) for b in range(2, 13)]
  if not 0 < n <= len(pool):
    raise ValueError(f"builtin:arith_mc: n must be in 1..{len(pool)}, got {n}")
  rng = random.Random(f"arith_mc/{seed}")  # str seeds hash with sha512: stable across runs
  rng.shuffle(pool)
  questions = []
  for a, b in pool[:n]:
    truth = a * b
    near = {truth + d for d in (-10, -2, -1, 1, 2, 10)} | {(a + 1) * b, (a - 1) * b, a * (b + 1), a * (b - 1), a + b}
    choices = rng.sample(sorted(c for c in near if c > 0 and c != truth), 3) + [truth]
    rng.shuffle(choices)
    questions.append(MCQuestion(f"arith_mc/{a}x{b}", f"What is {a} times {b}?", tuple(map(str, choices)),
                                choices.index(truth), "arithmetic"))
  return questions


def load_retain_set(spec: str) -> tuple[list[MCQuestion], dict, str]:
  """(questions, identity, format name): identity is what fixes the questions (generator or file content).

  The format defaults to cloze for builtin:arith_mc and letter (MMLU's own) for files.
  """
  target, options = split_spec(spec, OPTIONS)
  fmt = options.pop("format", "cloze" if target == "builtin:arith_mc" else "letter")
  if fmt not in FORMATS:
    raise BenchmarkError(f"retain set {spec!r}: format={fmt!r} is not one of {', '.join(FORMATS)}")
  try:
    ints = {k: int(v) for k, v in options.items()}
  except ValueError:
    raise BenchmarkError(f"retain set {spec!r}: n and seed must be integers, got {options}") from None
  if target == "builtin:arith_mc":
    n, seed = ints.get("n", 100), ints.get("seed", 0)
    return arith_mc(n, seed), {"generator": "arith_mc", "n": n, "seed": seed}, fmt
  if target.startswith("builtin:"):
    raise BenchmarkError(f"retain set {spec!r}: unknown built-in; known: builtin:arith_mc")
  if "seed" in ints:
    raise BenchmarkError(f"retain set {spec!r}: seed applies to builtin:arith_mc only")
  questions = load_retain_file(target)
  if "n" in ints:
    questions = questions[:ints["n"]]
  sha = artifacts.sha256_file(target) if target.endswith(".csv") else content_sha256(target)
  identity = {"file": os.path.basename(target.rstrip("/")), "sha256": sha, "n": len(questions)}
  return questions, identity, fmt
