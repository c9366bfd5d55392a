"""MATH-style normalisation of final answers (Hendrycks et al.'s `strip_string`, with Minerva's
thousands separators and `\\text{}` units), and exact number reading.

Conventions, as those graders: `\\%` / `%`, `^\\circ`, `\\$`, a trailing `\\text{ unit}` and
`\\left` / `\\right` are dropped, so "12.5\\%" equals "12.5" and "\\frac{25}{2}\\%", never 0.125;
`\\dfrac` / `\\tfrac` are `\\frac`; "1,000" is 1000 when the whole answer is one such number;
"x = 5" is 5 when the left side is a short name. Everything here is linear in the input.
"""

from __future__ import annotations

import fractions
import re

_MAX_NUMBER_CHARS = 100
# Drop, in this order. `\\!`, `\\,` ... are thin spaces; `1\\,000` must not become "1 000".
_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "^{\\circ}", "^\\circ", "°",
         "\\circ", "\\$", "\\%", "%", "$")
_SAME = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("{,}", ","), ("\\le ", "\\leq "), ("\\ge ", "\\geq "),
         ("\\mbox{", "\\text{"), ("\\textbf{", "\\text{"), ("\\mathrm{", "\\text{"))
# No leading \s*: a pattern that starts with a repeat is quadratic on long runs of spaces.
_TRAILING_TEXT_RE = re.compile(r"\\text\{\s*[A-Za-z][A-Za-z .^0-9]{0,30}\}(?:\^\{?\d\}?)?$")
_ONLY_TEXT_RE = re.compile(r"\\text\{([^{}]{0,200})\}")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "12 cm", "30 square units": a number and plain words (not `\\pi`, not one-letter variables).
_NUMBER_WORDS_RE = re.compile(r"([+-]?\d[\d.,/]*)\s+(?!pi\b|or\b|either\b)[A-Za-z]{2,15}(?:\s+[A-Za-z]{2,15})?")
_SHORT_LHS_RE = re.compile(r"^[A-Za-z](?:_\{?\w\}?)?\s*=\s*(?=\S)")
_FRAC_SHORT_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_RE = re.compile(r"\\frac\{([^{}]{1,50})\}(\d)|\\frac(\d)\{")
_SQRT_SHORT_RE = re.compile(r"\\sqrt(\d+|[A-Za-z])")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_TEX_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{(\d+)\}")
_OR_RE = re.compile(r"\\text\{\s*or\s*\}|\bor\b|\\lor\b|\\vee\b|\beither\b", re.IGNORECASE)


def canonical(s: str) -> str:
  """`s` with the MATH graders' decorations dropped; spaces kept (LaTeX needs `\\pi r`)."""
  s = s.strip()
  for old, new in _SAME:
    s = s.replace(old, new)
  for junk in _DROP:
    s = s.replace(junk, "")
  s = s.strip().rstrip(".").strip()
  stripped = _TRAILING_TEXT_RE.sub("", s).rstrip()
  s = stripped if stripped else s  # "5 \\text{ cm}" -> "5", but "\\text{cm}" alone stays
  only = _ONLY_TEXT_RE.fullmatch(s.strip())
  if only:
    s = only.group(1)
  s = s.strip()
  words = _NUMBER_WORDS_RE.fullmatch(s)
  if words:
    s = words.group(1)
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  s = _SHORT_LHS_RE.sub("", s, count=1) if s.count("=") == 1 else s
  return s.strip()


def squashed(s: str) -> str:
  """canonical(s) without spaces and with `\\frac12` / `\\sqrt3` braced: a string-equality key."""
  s = "".join(canonical(s).split())
  s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
  s = _FRAC_HALF_RE.sub(lambda m: f"\\frac{{{m[1]}}}{{{m[2]}}}" if m[1] else f"\\frac{{{m[3]}}}{{", s)
  s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
  if s.startswith("."):
    s = "0" + s
  return s


def as_number(s: str) -> fractions.Fraction | None:
  """The exact value of a squashed integer, decimal, a/b or \\frac{a}{b}; None for anything else."""
  if len(s) > _MAX_NUMBER_CHARS:
    return None
  try:
    if _NUMBER_RE.fullmatch(s):
      return fractions.Fraction(s)
    m = _TEX_FRAC_RE.fullmatch(s)
    if m:
      value = fractions.Fraction(int(m[2]), int(m[3]))
      return -value if m[1] == "-" else value
  except (ValueError, ZeroDivisionError):
    return None
  return None


def has_alternatives(s: str) -> bool:
  """Whether `s` offers alternatives ("5 or 6", "5 \\lor 6")."""
  return _OR_RE.search(s) is not None


def lists_several(s: str) -> bool:
  """Whether `s` is a top-level comma list ("3, 5"), not a tuple or interval in brackets."""
  depth = 0
  for ch in s:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      return True
  return False
