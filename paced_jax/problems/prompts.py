"""Problem -> prompt token ids, for the student and for the teacher with privileged context."""

from __future__ import annotations

from paced_jax.config import PromptConfig
from paced_jax.problems.records import Problem
from paced_jax.model.tokenization import render_chat


class PromptError(ValueError):
  """A problem lacks what the configured teacher context needs."""


def student_prompt(tokenizer, problem: Problem, cfg: PromptConfig) -> list[int]:
  text = cfg.student_template.format(problem=problem.prompt)
  return render_chat(tokenizer, text, cfg.system or None, cfg.enable_thinking)


def teacher_prompt(tokenizer, problem: Problem, cfg: PromptConfig) -> list[int]:
  """The teacher's prompt: the student's, plus the answer or an expert solution (METHOD.md 3)."""
  if cfg.teacher_context == "none":
    return student_prompt(tokenizer, problem, cfg)
  if cfg.teacher_context == "answer_only":
    text = cfg.answer_only_template.format(problem=problem.prompt, answer=problem.answer)
  else:
    if not problem.solution:
      raise PromptError(f"problem {problem.id!r}: teacher_context 'solution' needs a solution, and it has none")
    text = cfg.solution_template.format(problem=problem.prompt, solution=problem.solution)
  return render_chat(tokenizer, text, cfg.system or None, cfg.enable_thinking)
