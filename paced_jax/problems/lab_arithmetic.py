"""The method lab's synthetic task family: integer arithmetic with graded difficulty.

A problem is an expression over non-negative integers (`Compute 37*6+15.`); its worked solution
evaluates it one binary step per line, left to right, and ends in a final-answer line:

  30*6=180
  7*6=42
  180+42=222
  222+15=237
  Answer: 237

A multiplication (by one digit 2..9) only ever comes first, so left to right is also the usual
precedence; a two-digit one is worked as tens and units. Subtractions are only drawn where the running value
stays >= 0, so no step ever shows a negative number. Difficulty grows with the number of steps
and the size of the numbers in them (LEVELS), which is what makes a small model's pass rate fall
from near 1 to near 0 across levels. Grading is exact: the text after the last `Answer:` must be
the answer's digits.

The lab's student is bootstrapped on a second, worse format (FORMATS, `terse`): each operation as
its operator, operand and the running value, without the left operand and without the
tens-and-units split,

  *6=222
  +15=237
  Answer: 237

so it must carry the running value across lines and do a two-digit product in one step. The
teacher's worked format is a decomposition shared by every problem: what distillation from the
teacher can carry over beyond per-problem facts (the style gap). Both end in the same answer line.

Problems are drawn by rejection from each level's own seeded stream and kept in the train or
held-out partition of problems.in_split (which does not depend on the seed), round robin over
the levels, so a longer list extends a shorter one.
"""

from __future__ import annotations

import dataclasses
import random
import re

from paced_jax.problems.records import Problem, in_split, split_seed

NAME = "lab_arithmetic"
PROMPT = "Compute {expr}."
ANSWER_PREFIX = "Answer: "
_ANSWER_RE = re.compile(r"Answer:[ \t]*([^\n]*)")
_MAX_DRAWS = 200   # rejection draws per problem before a level counts as exhausted


@dataclasses.dataclass(frozen=True)
class Level:
  """One difficulty level: a first number (times one digit 2..9 when `product`), then `terms`
  additive terms of `term_digits` digits each."""
  first_digits: int
  terms: int
  term_digits: int
  ops: str                # "+" or "+-": the additive operators drawn
  product: bool = False

  def steps(self) -> int:
    """Solution lines before the answer line: a two-digit product takes three (tens, units, sum)."""
    return self.terms + (0 if not self.product else 3 if self.first_digits > 1 else 1)


LEVELS: dict[int, Level] = {
    1: Level(first_digits=2, terms=1, term_digits=1, ops="+"),                 # 47+8
    2: Level(first_digits=2, terms=2, term_digits=1, ops="+-"),                # 47+8-5
    3: Level(first_digits=2, terms=1, term_digits=2, ops="+-"),                # 47+85
    4: Level(first_digits=1, terms=1, term_digits=2, ops="+-", product=True),  # 7*8+23
    5: Level(first_digits=2, terms=4, term_digits=1, ops="+-"),                # 47+8-5+3-9
    6: Level(first_digits=2, terms=1, term_digits=2, ops="+-", product=True),  # 37*6+15
}


def _number(rng: random.Random, digits: int) -> int:
  return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits)


def draw(level: int, rng: random.Random) -> str:
  """One random expression of `level`, e.g. '37*6+15'."""
  spec = LEVELS[level]
  first = _number(rng, spec.first_digits)
  expr = str(first)
  value = first
  if spec.product:
    factor = rng.randrange(2, 10)
    expr += f"*{factor}"
    value *= factor
  for _ in range(spec.terms):
    term = _number(rng, spec.term_digits)
    op = rng.choice(spec.ops)
    if op == "-" and term > value:
      op = "+"
    expr += f"{op}{term}"
    value = value + term if op == "+" else value - term
  return expr


_TOKEN_RE = re.compile(r"\d+|[+\-*]")


def parse(expr: str) -> tuple[list[int], list[str]]:
  """'37*6+15' -> ([37, 6, 15], ['*', '+'])."""
  tokens = _TOKEN_RE.findall(expr)
  if "".join(tokens) != expr or len(tokens) % 2 == 0:
    raise ValueError(f"not a lab expression: {expr!r}")
  return [int(t) for t in tokens[::2]], tokens[1::2]


def worked_ops(expr: str) -> list[tuple[list[str], int]]:
  """Per operation, left to right: (its worked lines, the running value after it)."""
  numbers, ops = parse(expr)
  out, value = [], numbers[0]
  for op, x in zip(ops, numbers[1:]):
    if op == "*" and value < 10:
      lines = [f"{value}*{x}={value * x}"]
      value *= x
    elif op == "*":
      # 37*6 as 30*6 + 7*6: one-digit products and one addition, each a step a small model can learn.
      tens, units = value - value % 10, value % 10
      lines = [f"{tens}*{x}={tens * x}", f"{units}*{x}={units * x}", f"{tens * x}+{units * x}={value * x}"]
      value *= x
    else:
      new = value + x if op == "+" else value - x
      lines = [f"{value}{op}{x}={new}"]
      value = new
    out.append((lines, value))
  return out


def solution_steps(expr: str) -> list[str]:
  """The worked lines of `expr` (without the answer line), left to right."""
  return [line for lines, _ in worked_ops(expr) for line in lines]


def answer_of(expr: str) -> int:
  """The value of `expr`: steps left to right (products only ever come first)."""
  numbers, ops = parse(expr)
  value = numbers[0]
  for op, x in zip(ops, numbers[1:]):
    value = value * x if op == "*" else value + x if op == "+" else value - x
  return value


def answer_line(expr: str) -> str:
  return f"{ANSWER_PREFIX}{answer_of(expr)}"


def solution(expr: str) -> str:
  """The teacher's worked solution (the Problem's `solution`, and the self-distillation context)."""
  return "\n".join(solution_steps(expr) + [answer_line(expr)])


def terse_lines(expr: str) -> list[str]:
  """The student's lines: operator, operand and running value per operation ('*6=222')."""
  numbers, ops = parse(expr)
  return [f"{op}{x}={value}" for op, x, (_, value) in zip(ops, numbers[1:], worked_ops(expr))]


def terse_solution(expr: str) -> str:
  """The student's format: terse_lines, then the answer line."""
  return "\n".join(terse_lines(expr) + [answer_line(expr)])


# Solution format name -> writer; BootstrapConfig picks one for each bootstrapped model.
FORMATS = {"worked": solution, "terse": terse_solution}


def extract_answer(text: str) -> str | None:
  """The text after the last 'Answer:' on its line, stripped; None without one."""
  found = _ANSWER_RE.findall(text)
  return found[-1].strip() if found else None


def grade(text: str, answer: str) -> bool:
  """Exact grading: the final answer line holds exactly the answer's digits."""
  return extract_answer(text) == answer


def make_problem(expr: str, level: int, split: str) -> Problem:
  return Problem(id=f"{NAME}/{split}/{level}/{expr}", prompt=PROMPT.format(expr=expr), answer=str(answer_of(expr)),
                 solution=solution(expr), source=NAME, level=level)


def level_stream(level: int, seed: int, split: str) -> random.Random:
  """The seeded stream of one level: levels do not shift each other's draws."""
  return random.Random(split_seed(seed, f"{split}/level{level}"))


def generate(n: int, seed: int, split: str, levels: tuple[int, ...] = tuple(LEVELS)) -> list[Problem]:
  """`n` distinct problems of one split, round robin over `levels`; prefix-stable in `n`."""
  unknown = [lv for lv in levels if lv not in LEVELS]
  if unknown:
    raise ValueError(f"unknown lab levels {unknown}; known: {sorted(LEVELS)}")
  streams = {lv: level_stream(lv, seed, split) for lv in levels}
  seen: set[str] = set()
  problems: list[Problem] = []
  while len(problems) < n:
    for level in levels:
      if len(problems) == n:
        break
      for _ in range(_MAX_DRAWS):
        expr = draw(level, streams[level])
        if expr not in seen and in_split(expr, split):
          break
      else:
        raise ValueError(f"{NAME} level {level}: no new {split} problem in {_MAX_DRAWS} draws "
                         f"after {len(problems)} problems; ask for fewer")
      seen.add(expr)
      problems.append(make_problem(expr, level, split))
  return problems


def settings() -> dict:
  """What fixes the generator's output besides n, seed and split (kept in the problems manifest)."""
  return {"levels": {str(k): dataclasses.asdict(v) for k, v in LEVELS.items()}, "prompt": PROMPT}
