"""Answer verifier: final-answer extraction, then math-verify grading under a wall-clock bound.

Extraction and a string/number fast path run in the calling process, in linear time. The rest
goes to math-verify in spawned worker processes: its own timeouts use signal.alarm (main thread
only, so they are switched off here), and a sympy call stuck in C can only be stopped by killing
the process that runs it. Never fork: the parent usually has JAX initialised.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import logging
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import re
import time
from typing import Callable, Sequence

from paced_jax.config import STRATEGIES, VerifierConfig

# (answer, truth) -> equivalent?  Both are cleaned LaTeX strings. Must be picklable for Grader.
Compare = Callable[[str, str], bool]

_STARTUP_TIMEOUT_S = 120.0
_MAX_STARTUP_FAILURES = 3


@dataclasses.dataclass(frozen=True)
class Verdict:
  """Grade of one response.

  reason: "exact" / "numeric" (fast path), "equivalent" (math-verify), "mismatch", "no_answer",
  "empty_truth", "too_long", "timeout", "worker_crash: exit code N", or "error: <exception>".
  """

  correct: bool
  extracted: str | None
  reason: str


# Every pattern below has a literal anchor or unambiguous quantifiers, so matching is linear.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*(?:\{|\Z)")
_BRACE_TOKEN_RE = re.compile(r"\\[\s\S]|[{}]")
_ANSWER_RE = re.compile(r"answer[ \t*]{0,4}:", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_FULL_NUMBER_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_THIN_SPACES = ("\\!", "\\,", "\\;", "\\:")
_TRUNCATED = object()


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
  last = None
  for last in pattern.finditer(text):
    pass
  return last


def _last_boxed(text: str) -> str | object | None:
  """Content of the last box; None without one; _TRUNCATED if the last box never closes."""
  last = _last_match(_BOX_RE, text)
  if last is None or not last.group().endswith("{"):
    return None if last is None else _TRUNCATED
  depth = 0
  for tok in _BRACE_TOKEN_RE.finditer(text, last.end() - 1):
    if tok.group() == "{":
      depth += 1
    elif tok.group() == "}":
      depth -= 1
      if depth == 0:
        return text[last.end():tok.start()]
  return _TRUNCATED


def _answer_line(text: str) -> str | None:
  last = _last_match(_ANSWER_RE, text)
  if last is None:
    return None
  end = text.find("\n", last.end())
  return text[last.end():end if end >= 0 else len(text)].strip(" \t\r*")


def _last_number(text: str) -> str | None:
  last = _last_match(_NUMBER_RE, text)
  return None if last is None else last.group().replace(",", "")


def _strip(s: str) -> str:
  # str.strip, not a regex: a `[\s$.]+$` pattern is quadratic on long runs of those characters.
  return s.strip(" \t\r\n$").rstrip(" \t\r\n$.")


def extract_answer(text: str, cfg: VerifierConfig = VerifierConfig()) -> str | None:
  """The final answer in `text` by the strategies of `cfg.extract`, or None."""
  for strategy in cfg.extract:
    if strategy == "boxed":
      found = _last_boxed(text)
      if found is _TRUNCATED:
        return None
    elif strategy == "answer_line":
      found = _answer_line(text)
    else:
      found = _last_number(text)
    if found is not None and _strip(found):
      return _strip(found)
  return None


def _clean(s: str) -> str:
  """Drop what math-verify misreads: thin spaces (`1\\,000` parses as 0) and `{,}` separators."""
  for macro in _THIN_SPACES:
    s = s.replace(macro, "")
  return _strip(s.replace("{,}", ","))


def _squash(s: str) -> str:
  return "".join(s.split()).replace("$", "").rstrip(".")


def _as_number(s: str) -> fractions.Fraction | None:
  if len(s) > 100 or not _FULL_NUMBER_RE.fullmatch(s):
    return None
  try:
    return fractions.Fraction(s.replace(",", ""))
  except (ValueError, ZeroDivisionError):
    return None


def _prejudge(response: str, truth: str, cfg: VerifierConfig) -> Verdict | tuple[str, str, str]:
  """A final Verdict when no math-verify is needed, else (extracted, answer, gold) for it."""
  extracted = extract_answer(response, cfg)
  if extracted is None:
    return Verdict(False, None, "no_answer")
  if "\\boxed" in truth or "\\fbox" in truth:
    boxed = _last_boxed(truth)
    truth = boxed if isinstance(boxed, str) else truth
  gold, answer = _clean(truth), _clean(extracted)
  if not gold:
    return Verdict(False, extracted, "empty_truth")
  if _squash(answer) == _squash(gold):
    return Verdict(True, extracted, "exact")
  a, g = _as_number(_squash(answer)), _as_number(_squash(gold))
  if a is not None and g is not None:
    if a == g:
      return Verdict(True, extracted, "numeric")
    # Decimals still go to math-verify, which accepts 0.333333 for 1/3; distinct integers never match.
    if a.denominator == 1 and g.denominator == 1:
      return Verdict(False, extracted, "mismatch")
  if not cfg.math_verify:
    return Verdict(False, extracted, "mismatch")
  if len(answer) > cfg.max_answer_chars:
    return Verdict(False, extracted, "too_long")
  return extracted, answer, gold


def math_verify_equal(answer: str, truth: str) -> bool:
  """math-verify equivalence of two bare LaTeX answers, with its signal-based timeouts off."""
  import math_verify

  gold = math_verify.parse(f"${truth}$", parsing_timeout=None)
  pred = math_verify.parse(f"${answer}$", parsing_timeout=None)
  return bool(gold) and bool(pred) and bool(math_verify.verify(gold, pred, timeout_seconds=None))


def _compare_one(compare: Compare, answer: str, gold: str) -> tuple[bool, str]:
  try:
    ok = bool(compare(answer, gold))
  except Exception as e:  # a grading bug must cost one item, not the run
    return False, f"error: {type(e).__name__}: {e}"[:300]
  return ok, "equivalent" if ok else "mismatch"


def grade(response: str, truth: str, cfg: VerifierConfig = VerifierConfig(),
          compare: Compare | None = None) -> Verdict:
  """Grade one response in this process, without a time bound (tests, debugging)."""
  pre = _prejudge(response, truth, cfg)
  if isinstance(pre, Verdict):
    return pre
  extracted, answer, gold = pre
  ok, reason = _compare_one(compare or math_verify_equal, answer, gold)
  return Verdict(ok, extracted, reason)


def _worker_main(conn: mpc.Connection, compare: Compare | None) -> None:
  # Nobody reads worker logs; math-verify warns once per process that its timeout is off.
  logging.getLogger("math_verify").setLevel(logging.ERROR)
  if compare is None:
    compare = math_verify_equal
    compare("1/2", "\\frac{1}{2}")  # first parse builds grammars: keep that out of item deadlines
  conn.send(None)
  while True:
    try:
      job = conn.recv()
    except EOFError:
      return
    if job is None:
      return
    index, answer, gold = job
    conn.send((index, *_compare_one(compare, answer, gold)))


class _Worker:
  def __init__(self, ctx: mp.context.BaseContext, compare: Compare | None):
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=_worker_main, args=(child, compare), daemon=True, name="paced-verifier")
    self.proc.start()
    child.close()  # else the parent holds the child's end open and never sees EOF when it dies
    self.started = time.monotonic()
    self.ready = False
    self.job: tuple[int, float] | None = None  # (item index, deadline)

  def kill(self) -> None:
    self.proc.kill()
    self.proc.join(10)
    self.conn.close()


class Grader:
  """Grades many responses in worker processes; each item gets at most `cfg.timeout_s`.

  A worker that exceeds the bound is killed and replaced (verdict "timeout"); one that dies gives
  "worker_crash". Use as a context manager; not thread-safe. `compare` replaces math-verify
  (a picklable module-level function; tests use it to inject hangs and crashes). Workers start
  on first need and re-import the parent's __main__ (spawn semantics), so scripts need the
  `if __name__ == "__main__":` guard.
  """

  def __init__(self, cfg: VerifierConfig = VerifierConfig(), compare: Compare | None = None):
    self.cfg = cfg
    self._compare = compare
    self._ctx = mp.get_context(cfg.start_method)
    self._max_workers = cfg.workers or min(4, os.cpu_count() or 1)
    self._workers: list[_Worker] = []
    self._startup_failures = 0

  def __enter__(self) -> Grader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    for w in self._workers:
      w.kill()
    self._workers.clear()

  def grade_many(self, responses: Sequence[str], truths: Sequence[str]) -> list[Verdict]:
    """Verdicts in input order."""
    if len(responses) != len(truths):
      raise ValueError(f"{len(responses)} responses but {len(truths)} truths")
    results: list[Verdict | None] = [None] * len(responses)
    jobs: dict[int, tuple[str, str, str]] = {}
    for i, (response, truth) in enumerate(zip(responses, truths)):
      pre = _prejudge(response, truth, self.cfg)
      if isinstance(pre, Verdict):
        results[i] = pre
      else:
        jobs[i] = pre
    if jobs:
      try:
        self._run(jobs, results)
      except BaseException:
        self.close()  # workers may hold jobs of this call; never let them answer the next one
        raise
    return results  # type: ignore[return-value]

  def _run(self, jobs: dict[int, tuple[str, str, str]], results: list[Verdict | None]) -> None:
    for w in [w for w in self._workers if not w.proc.is_alive()]:
      self._replace(w)  # died while idle between calls: not the fault of any item
    while len(self._workers) < min(self._max_workers, len(jobs)):
      self._workers.append(_Worker(self._ctx, self._compare))
    pending = collections.deque(jobs)
    while pending or any(w.job for w in self._workers):
      for w in self._workers:
        if w.ready and w.job is None and pending:
          index = pending.popleft()
          w.job = (index, time.monotonic() + self.cfg.timeout_s)
          try:
            w.conn.send((index, *jobs[index][1:]))
          except OSError:
            pass  # it died; the wait below sees EOF and records the crash
      waiting = [w for w in self._workers if w.job or not w.ready]
      deadline = min(w.job[1] if w.job else w.started + _STARTUP_TIMEOUT_S for w in waiting)
      readable = mpc.wait([w.conn for w in waiting], max(0.0, deadline - time.monotonic()))
      now = time.monotonic()
      for w in waiting:
        if w.conn in readable:
          self._receive(w, jobs, results)
        elif w.job and now >= w.job[1]:
          results[w.job[0]] = Verdict(False, jobs[w.job[0]][0], "timeout")
          self._replace(w)
        elif not w.ready and now >= w.started + _STARTUP_TIMEOUT_S:
          self._replace(w)

  def _receive(self, w: _Worker, jobs: dict[int, tuple[str, str, str]], results: list[Verdict | None]) -> None:
    try:
      msg = w.conn.recv()
    except (EOFError, OSError):
      if w.job:
        w.proc.join(10)
        results[w.job[0]] = Verdict(False, jobs[w.job[0]][0], f"worker_crash: exit code {w.proc.exitcode}")
      self._replace(w)
      return
    if not w.ready:
      w.ready, self._startup_failures = True, 0
      return
    index, ok, reason = msg
    if w.job and index == w.job[0]:
      results[index] = Verdict(ok, jobs[index][0], reason)
      w.job = None

  def _replace(self, w: _Worker) -> None:
    """Kill `w` and start a fresh worker in its place; give up if workers cannot even start."""
    w.kill()
    self._workers.remove(w)
    if not w.ready:
      self._startup_failures += 1
      if self._startup_failures >= _MAX_STARTUP_FAILURES:
        raise RuntimeError(f"verifier workers failed to start {self._startup_failures} times in a row "
                           f"(last exit code {w.proc.exitcode})")
    self._workers.append(_Worker(self._ctx, self._compare))
