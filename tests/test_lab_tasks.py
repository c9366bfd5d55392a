"""The lab's task generator: answers against Python's own arithmetic, levels as specified, seeds, grading."""

from __future__ import annotations

import re

import pytest

from paced_jax.problems import lab_arithmetic as L
from paced_jax.problems import builtin
from paced_jax.problems import prepare as prepare_lib
from paced_jax.evaluation import verifier

_EXPR = re.compile(r"^[0-9+\-*]+$")


def _python_value(expr: str) -> int:
  """Brute force: Python's parser and int arithmetic, with the usual precedence."""
  assert _EXPR.match(expr), expr
  return eval(expr, {"__builtins__": {}})  # digits and + - * only (checked above)


def _expr(problem) -> str:
  m = re.fullmatch(r"Compute (.+)\.", problem.prompt)
  assert m, problem.prompt
  return m.group(1)


@pytest.fixture(scope="module")
def pool():
  return L.generate(600, seed=0, split="train") + L.generate(300, seed=1, split="heldout")


def test_answers_and_every_solution_step_are_right(pool):
  for p in pool:
    expr = _expr(p)
    assert p.answer == str(_python_value(expr)), expr
    *steps, last = p.solution.split("\n")
    assert last == f"Answer: {p.answer}"
    for line in steps:
      lhs, rhs = line.split("=")
      assert int(rhs) == _python_value(lhs) and int(rhs) >= 0, (expr, line)
    # The worked lines end at the answer, and each step starts from a number seen before.
    assert int(steps[-1].split("=")[1]) == int(p.answer)
    seen = set(L.parse(expr)[0])
    for line in steps:
      lhs, rhs = line.split("=")
      first = int(re.match(r"\d+", lhs).group())
      assert first in seen or first in {x - x % 10 for x in seen} or first in {x % 10 for x in seen}, (expr, line)
      seen.add(int(rhs))


def test_levels_as_specified(pool):
  for p in pool:
    spec = L.LEVELS[p.level]
    numbers, ops = L.parse(_expr(p))
    assert len(numbers) == 1 + spec.product + spec.terms
    assert len(str(numbers[0])) == spec.first_digits or (spec.first_digits == 1 and numbers[0] < 10)
    rest = numbers[1:]
    if spec.product:
      assert ops[0] == "*" and 2 <= numbers[1] <= 9
      ops, rest = ops[1:], rest[1:]
    assert "*" not in ops and set(ops) <= set(spec.ops)
    assert all(x < 10 ** spec.term_digits and (spec.term_digits == 1 or x >= 10 ** (spec.term_digits - 1))
               for x in rest)
    assert len(p.solution.split("\n")) == spec.steps() + 1
    assert p.id.startswith("lab_arithmetic/") and f"/{p.level}/" in p.id and p.source == "lab_arithmetic"
  # Round robin: equal shares per level.
  train = pool[:600]
  assert all(sum(p.level == lv for p in train) == 100 for lv in L.LEVELS)


def test_deterministic_by_seed_prefix_stable_and_splits_disjoint():
  a = L.generate(120, seed=5, split="train")
  assert a == L.generate(120, seed=5, split="train")
  assert a != L.generate(120, seed=6, split="train")
  assert L.generate(50, seed=5, split="train") == a[:50]
  held = L.generate(120, seed=5, split="heldout") + L.generate(120, seed=6, split="heldout")
  assert not {_expr(p) for p in a} & {_expr(p) for p in held}
  assert len({p.id for p in a}) == len(a)
  # The pipeline's built-in source is the same generator.
  assert builtin.generate("lab_arithmetic", 120, seed=5, split="train") == a


def test_exhausted_level_is_an_error():
  with pytest.raises(ValueError, match="level 1"):
    L.generate(2000, seed=0, split="heldout", levels=(1,))   # 900 expressions, 1 in 5 held out


def test_prepare_records_generator_settings(tmp_path):
  directory = prepare_lib.prepare(str(tmp_path), "builtin:lab_arithmetic", n_train=12, n_heldout=6, seed=0)
  from paced_jax import artifacts
  manifest = artifacts.read_manifest(directory, prepare_lib.KIND)
  assert manifest["config"]["generator"]["levels"]["6"]["product"] is True
  assert [p.level for p in prepare_lib.read_problems(str(tmp_path), "heldout")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("text,ok", [
    ("12+5=17\nAnswer: 17", True),
    ("Answer: 17\n", True),
    ("Answer: 3\nAnswer: 17", True),        # the last answer line counts
    ("Answer: 17\nAnswer: 3", False),
    ("Answer: 017", False),
    ("Answer: 10+7", False),
    ("Answer: 17.", False),
    ("12+5=17", False),                     # no answer line
    ("", False),
])
def test_exact_grading(text, ok):
  assert L.grade(text, "17") is ok


def test_pipeline_verifier_in_exact_mode_agrees(pool):
  """The pipeline grades with the verifier (answer line, no math-verify); it must agree with
  lab_tasks.grade on right, wrong and malformed answers, and never call math-verify."""
  cfg = verifier.VerifierConfig(extract=("answer_line",), math_verify=False)
  cases = []
  for p in pool[:60]:
    a = int(p.answer)
    cases += [(p.solution, p.answer), (p.solution.replace(f"Answer: {a}", f"Answer: {a + 1}"), p.answer),
              (p.solution.replace(f"Answer: {a}", f"Answer: {a}+0"), p.answer),
              (p.solution.rsplit("\n", 1)[0], p.answer)]

  def never(answer, gold):
    raise AssertionError("math-verify was called")
  for text, truth in cases:
    assert verifier.grade(text, truth, cfg, compare=never).correct == L.grade(text, truth), text
  # With math-verify on, the same expression answer would go to it.
  assert verifier.grade("Answer: 100+8", "108", verifier.VerifierConfig(extract=("answer_line",)),
                        compare=lambda a, g: True).correct
  assert not verifier.grade("Answer: 100+8", "108", cfg).correct
