"""Sample and grade: the one way a model's answers to problems are produced and judged.

Pass rates (K student rollouts per training problem), evaluation (mean@k, greedy pass@1) and
teacher references (one teacher response per problem) all sample through `sample_and_grade`.
Each problem's randomness is keyed by its id (`problem_key`), so a result does not depend on
chunking, batch size or a resumed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from paced_jax.config import ConfigError, SamplingConfig
from paced_jax.evaluation.verifier import Grader, Verdict
from paced_jax.model.loaded import LoadedModel
from paced_jax.problems.records import Problem
from paced_jax.sampling.sampler import Sampler


def problem_key(problem_id: str) -> int:
  """A stable 31-bit sampling key per problem id."""
  return int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class Graded:
  """One problem's R sampled responses and their verdicts."""
  token_ids: list[np.ndarray]
  texts: list[str]
  finished: list[bool]
  verdicts: list[Verdict]

  @property
  def correct(self) -> int:
    return sum(v.correct for v in self.verdicts)

  @property
  def lengths(self) -> list[int]:
    return [int(len(t)) for t in self.token_ids]


def check_prompts(model: LoadedModel, problems: Sequence[Problem], render, sampling: SamplingConfig,
                  where: str) -> int:
  """Refuse, before anything is sampled or written, a prompt with no room for `max_new_tokens` within
  the model's positions; the error names the problem. `render(tokenizer, problem)` gives its ids.
  Returns the longest prompt's length (the stage's `prompt_len` for `sample_and_grade`)."""
  room = model.cfg.max_position_embeddings - sampling.max_new_tokens
  longest = 1
  for p in problems:
    n = len(render(model.tokenizer, p))
    if n > room:
      raise ConfigError(f"problem {p.id!r}: its {where} prompt has {n} tokens; with {where} max_new_tokens "
                        f"{sampling.max_new_tokens} that exceeds the model's {model.cfg.max_position_embeddings} "
                        "positions (shorten or drop the problem, or lower max_new_tokens)")
    longest = max(longest, n)
  return longest


def sampler_for(model: LoadedModel, params=None) -> Sampler:
  """A stage's one sampler: `model` with `params` (None: its loaded weights), for all its chunks."""
  return Sampler.for_model(model, params)


def sample_and_grade(model: LoadedModel, params, problems: Sequence[Problem], prompt_ids: Sequence[Sequence[int]],
                     sampling: SamplingConfig, grader: Grader, *, progress: str | bool = False,
                     prompt_len: int | None = None, sampler: Sampler | None = None) -> list[Graded]:
  """`sampling.num_samples` responses to each prompt (one per problem) from `model` with `params`
  (None: its loaded weights), decoded without special tokens and graded against the problem's answer.
  A stage that samples in chunks passes its longest prompt (`check_prompts`) as `prompt_len`, so
  the chunks share one compile, and one `sampler` (`Sampler.for_model(model, params)`, the
  default) for all of them instead of a new copy of the weights per chunk."""
  sampler = sampler if sampler is not None else Sampler.for_model(model, params)
  rollouts = sampler.generate(prompt_ids, sampling, prompt_keys=[problem_key(p.id) for p in problems],
                              progress=progress, prompt_len=prompt_len)
  tok = model.tokenizer
  texts = [[tok.decode(r.tokens, skip_special_tokens=True) for r in per] for per in rollouts]
  R = sampling.num_samples
  # A response cut at max_new_tokens never counts as correct, whatever it boxed before the cut.
  flat = grader.grade_many([t for per in texts for t in per], [p.answer for p in problems for _ in range(R)],
                           [bool(r.finished) for per in rollouts for r in per])
  return [Graded([r.tokens for r in per], texts[i], [bool(r.finished) for r in per], flat[i * R:(i + 1) * R])
          for i, per in enumerate(rollouts)]
