"""Final-answer extraction: every answer a response states as final, and whether it was cut off.

A strategy (config.STRATEGIES) yields the answers the response declares: "boxed" every closed
`\\boxed{}` / `\\fbox{}`; "answer_line" every "Answer:" line and "the (final) answer is ..."
statement; "last_number" the number of a final sentence that is an answer statement ("= 12",
"the total is 12", "So the probability is 50%", "12" alone), never a number that merely occurs
in prose. Every pattern has a
literal anchor or bounded quantifiers, so extraction is linear in the text.
"""

from __future__ import annotations

import dataclasses
import re

from paced_jax.config import VerifierConfig

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*(?:\{|\Z)")
_BRACE_TOKEN_RE = re.compile(r"\\[\s\S]|[{}]")
_ANSWER_LINE_RE = re.compile(r"answer[ \t*]{0,4}:", re.IGNORECASE)
_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?"
# "the answer is 12." / "the final answer is $\\frac{1}{2}$": a number or one inline formula.
_ANSWER_IS_RE = re.compile(r"\banswer\s+(?:is|=)\s*:?\s*(?:\*\*)?(?:\$([^$\n]{1,300})\$|(" + _NUM + r")(?![\d.,]\d))",
                           re.IGNORECASE)
# "if the answer is 6" / "suppose the answer is 6" try a value; "or maybe the answer is 6" states one.
_TRIAL_RE = re.compile(r"\b(?:if|whether|suppose|supposing|assume|assuming|check|checking|verify|test|testing|"
                       r"unless)\b[^.!?\n]*$", re.IGNORECASE)
_LEAD_WINDOW = 60
_OR_NEXT_RE = re.compile(r"[\s,$]{0,4}(?:or|either)\b", re.IGNORECASE)
# "12 apples", "50%"; not "3y" (a term) nor "12 or so" (an estimate).
_UNIT = r"(?:\s*\\?%|\s+(?!or\b)[A-Za-z]+(?:\s+[A-Za-z]+)?)?"
_FINAL_SENTENCE_RES = (
    re.compile(r"^\\?\$?\s*(" + _NUM + r")" + _UNIT + r"$"),
    re.compile(r"=\s*\\?\$?\s*(" + _NUM + r")" + _UNIT + r"$"),
    re.compile(r"\b(?:answer|result|total|sum|product|difference|quotient|value)\b[^=\n]{0,80}?"
               r"\b(?:is|equals|are)\s*:?\s*\\?\$?\s*(" + _NUM + r")" + _UNIT + r"$", re.IGNORECASE),
    re.compile(r"^(?:so|thus|therefore|hence|finally)\b[^=\n]{0,120}?\b(?:is|equals|are|gives|get|makes)\s*:?\s*"
               r"\\?\$?\s*(" + _NUM + r")" + _UNIT + r"$", re.IGNORECASE),
)
_SENTENCE_END_RE = re.compile(r"[.!?](?:\s|\*)")
_MAX_FINAL_SENTENCE = 500
_DECORATION = " \t\r\n*$.!"


@dataclasses.dataclass(frozen=True)
class Extraction:
  """answers: what the chosen strategy found, in text order (the last one is "the" answer).
  others: answers the other enabled strategies state as final (hedges across strategies).
  truncated: an unclosed box or a half-written answer: the response was cut off."""

  answers: tuple[str, ...] = ()
  others: tuple[str, ...] = ()
  truncated: bool = False


def _strip(s: str) -> str:
  # str.strip, not a regex: a `[\s$.]+$` pattern is quadratic on long runs of those characters.
  return s.strip(" \t\r\n$").rstrip(" \t\r\n$.")


def balanced(s: str) -> bool:
  """Braces balance (escaped ones aside) and `$` signs pair up."""
  depth = 0
  for tok in _BRACE_TOKEN_RE.finditer(s):
    if tok.group() == "{":
      depth += 1
    elif tok.group() == "}":
      depth -= 1
      if depth < 0:
        return False
  return depth == 0 and s.replace("\\$", "").count("$") % 2 == 0


def _boxes(text: str) -> tuple[list[str], bool]:
  """Contents of every closed box, and whether a box is left open (all later text is inside it)."""
  found, pos = [], 0
  while True:
    m = _BOX_RE.search(text, pos)
    if m is None:
      return found, False
    if not m.group().endswith("{"):
      return found, True
    depth = 0
    for tok in _BRACE_TOKEN_RE.finditer(text, m.end() - 1):
      if tok.group() == "{":
        depth += 1
      elif tok.group() == "}":
        depth -= 1
        if depth == 0:
          found.append(text[m.end():tok.start()])
          pos = tok.end()
          break
    else:
      return found, True


def _answer_lines(text: str) -> list[str]:
  found = []
  for m in _ANSWER_LINE_RE.finditer(text):
    end = text.find("\n", m.end())
    found.append((m.start(), text[m.end():end if end >= 0 else len(text)].strip(" \t\r*")))
  for m in _ANSWER_IS_RE.finditer(text):
    if not _TRIAL_RE.search(text, max(0, m.start() - _LEAD_WINDOW), m.start()):
      alternative = _OR_NEXT_RE.match(text, m.end())  # "the answer is 4 or 5": keep the "or" (a hedge)
      found.append((m.start(), (m.group(1) or m.group(2)) + (" or" if alternative else "")))
  return [a for _, a in sorted(found)]


def _final_sentence_number(text: str) -> str | None:
  line = text.rstrip(_DECORATION)
  line = line[line.rfind("\n") + 1:]
  ends = [m.end() for m in _SENTENCE_END_RE.finditer(line)]
  sentence = line[ends[-1]:] if ends else line
  sentence = sentence.strip(_DECORATION)
  if not sentence or len(sentence) > _MAX_FINAL_SENTENCE:
    return None
  for pattern in _FINAL_SENTENCE_RES:
    m = pattern.search(sentence)
    if m:
      return m.group(1).replace(",", "")
  return None


def extract(text: str, cfg: VerifierConfig = VerifierConfig()) -> Extraction:
  """The final answers stated in `text` under `cfg.extract` (see the module docstring)."""
  per_strategy: dict[str, list[str]] = {}
  truncated = False
  for strategy in cfg.extract:
    if strategy == "boxed":
      found, open_box = _boxes(text)
      truncated |= open_box
    elif strategy == "answer_line":
      found = [a for a in _answer_lines(text) if not _BOX_RE.search(a)]  # boxes count as boxes
      truncated |= any(not balanced(a) for a in found[-1:])
    else:
      last = _final_sentence_number(text)
      found = [last] if last is not None else []
    per_strategy[strategy] = [a for a in map(_strip, found) if a]
  chosen = next((s for s in cfg.extract if per_strategy[s]), None)
  if chosen is None:
    return Extraction(truncated=truncated)
  others = tuple(a for s in cfg.extract if s != chosen and s != "last_number" for a in per_strategy[s])
  return Extraction(tuple(per_strategy[chosen]), others, truncated)


def extract_answer(text: str, cfg: VerifierConfig = VerifierConfig()) -> str | None:
  """The final answer of `text` (the last one its first fruitful strategy finds), or None when cut off."""
  found = extract(text, cfg)
  return None if found.truncated or not found.answers else found.answers[-1]
