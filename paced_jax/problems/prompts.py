"""Problem -> prompt token ids, for the student and for the teacher with privileged context."""

from __future__ import annotations

import warnings

from paced_jax.config import PromptConfig
from paced_jax.problems.records import Problem
from paced_jax.model.tokenization import render_chat

# One message, one line: Python's default filter prints it once per process, not once per problem.
NO_SOLUTION_WARNING = ("teacher_context 'solution': some problems have no expert solution; their teacher sees "
                       "the answer instead (answer_only_template). Set prompts.teacher_context=answer_only to make "
                       "that the rule, or give the problems a solution column (problems.field_solution).")


class NoSolutionWarning(UserWarning):
  """A problem without a solution under teacher_context 'solution': its teacher gets the answer only."""


def student_prompt(tokenizer, problem: Problem, cfg: PromptConfig) -> list[int]:
  text = cfg.student_template.format(problem=problem.prompt)
  return render_chat(tokenizer, text, cfg.system or None, cfg.enable_thinking)


def teacher_text(problem: Problem, cfg: PromptConfig) -> str:
  """The teacher's user message: the problem, plus the expert solution or the answer (METHOD.md 3).

  Under 'solution' a problem without one falls back to 'answer_only' (NoSolutionWarning), so the
  built-in sources without solutions keep working with the paper's default.
  """
  if cfg.teacher_context == "none":
    return cfg.student_template.format(problem=problem.prompt)
  if cfg.teacher_context == "solution" and problem.solution:
    return cfg.solution_template.format(problem=problem.prompt, solution=problem.solution)
  if cfg.teacher_context == "solution":
    warnings.warn(NO_SOLUTION_WARNING, NoSolutionWarning)
  return cfg.answer_only_template.format(problem=problem.prompt, answer=problem.answer)


def teacher_prompt(tokenizer, problem: Problem, cfg: PromptConfig) -> list[int]:
  return render_chat(tokenizer, teacher_text(problem, cfg), cfg.system or None, cfg.enable_thinking)
