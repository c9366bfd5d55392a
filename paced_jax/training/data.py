"""What each train step learns from: weighted problems, and their sequences with teacher signal.

The problem batch of step s is a pure function of (seed, s) through a grain MapDataset, so the
data iterator's checkpointed state is just the step number, and a resumed run sees the same
batches. With train.one_pass the batches walk a seeded order of the pool once instead; the walk
up to step s is replayed from the pass-rate rounds on disk (one_pass_walk), so it resumes too. Sequences come either from stored references + the offline teacher store, or on-policy:
the current student samples, the frozen teacher scores the same tokens under its own prompt.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import grain
import numpy as np

from paced_jax import artifacts
from paced_jax import workspace
from paced_jax.evaluation import pass_rate, rollouts as rollouts_lib
from paced_jax.problems import prompts as prompts_lib
from paced_jax.teacher import reference
from paced_jax.model import scoring as teacher_scoring
from paced_jax.training import weights as weights_lib
from paced_jax.config import ExperimentConfig
from paced_jax.model.loaded import LoadedModel
from paced_jax.training.packing import Example
from paced_jax.problems.prepare import read_problems
from paced_jax.problems.records import Problem
from paced_jax.sampling.sampler import Sampler
from paced_jax.teacher.store import TeacherStore


@dataclasses.dataclass(frozen=True)
class WeightedProblems:
  problems: tuple[Problem, ...]      # kept problems (w > 0 unless keep_zero_weight)
  weight: dict[str, float]
  correct: dict[str, int]
  K: int
  dropped: int                       # problems with w = 0 left out
  round_dir: str
  one_pass: bool = False             # problems are in walk order, each drawn once from first_step on
  first_step: int = 0                # one pass: the step this round's part of the walk starts at

  def batch(self, step: int, batch_size: int, seed: int) -> list[Problem]:
    """The problems of `step`: epochs of a seeded shuffle, reshuffled every epoch; or the next
    `batch_size` of the one-pass walk (an IndexError past its end: see one_pass_steps)."""
    if self.one_pass:
      start = (step - self.first_step) * batch_size
      if start < 0 or start + batch_size > len(self.problems):
        raise IndexError(f"one-pass step {step}: the walk from step {self.first_step} has "
                         f"{len(self.problems) // batch_size} full batches of {batch_size}")
      return list(self.problems[start:start + batch_size])
    ds = grain.MapDataset.source(list(range(len(self.problems)))).shuffle(seed=seed).repeat().batch(batch_size)
    return [self.problems[i] for i in ds[step]]

  def steps_left(self, batch_size: int) -> int:
    """One pass: the last step (exclusive) this round's walk has a full batch for."""
    return self.first_step + len(self.problems) // batch_size

  def summary(self) -> dict:
    w = np.array([self.weight[p.id] for p in self.problems], np.float64)
    return {"kept": len(self.problems), "dropped": self.dropped, "K": self.K,
            "ess": float(weights_lib.effective_sample_size(w.sum(), (w ** 2).sum())), "mean_weight": float(w.mean()) if len(w) else 0.0}


def pool(cfg: ExperimentConfig) -> list[Problem]:
  """The training problems a run may draw: the first train.pool of them (all if 0), and for a
  one-pass run in the walk's order (a permutation seeded by train.seed)."""
  problems = read_problems(cfg.workdir, "train")
  t = cfg.train
  if t.pool > len(problems):
    raise ValueError(f"config.train.pool: {t.pool} problems asked, {cfg.workdir}/problems has {len(problems)}")
  problems = problems[:t.pool] if t.pool else problems
  if t.one_pass:
    problems = [problems[i] for i in np.random.default_rng(t.seed).permutation(len(problems))]
  return problems


def weighted_problems(cfg: ExperimentConfig, round_: int | None = None, *, exclude: frozenset[str] = frozenset(),
                      first_step: int = 0) -> WeightedProblems:
  """Weights from the pass rates of `round_` (default: the latest finished round) over the pool,
  less the `exclude`d problems (one pass: those drawn before `first_step`)."""
  round_ = pass_rate.latest_round(cfg.workdir) if round_ is None else round_
  if round_ is None:
    raise FileNotFoundError(f"{cfg.workdir}/pass_rates: no finished round; run the pass_rate stage first")
  directory = workspace.pass_rates_dir(cfg.workdir, round_)
  by_id = {r["id"]: r for r in pass_rate.read_records(directory)}
  problems = [p for p in pool(cfg) if p.id not in exclude]
  missing = [p.id for p in problems if p.id not in by_id]
  if missing:
    raise ValueError(f"{directory}: no pass rate for {len(missing)} training problems (e.g. {missing[0]!r})")
  K = by_id[problems[0].id]["K"] if problems else 1
  correct = np.array([by_id[p.id]["correct"] for p in problems])
  w, keep = weights_lib.problem_weights(correct, K, cfg.weights)
  kept = tuple(p for p, k in zip(problems, keep) if k)
  if not kept:
    raise ValueError(f"{directory}: every problem has weight 0 under scheme {cfg.weights.scheme!r} "
                     "(pass rates all 0 or 1); set config.weights.keep_zero_weight=True or use easier problems")
  return WeightedProblems(kept, {p.id: float(x) for p, x in zip(problems, w)},
                          {p.id: int(c) for p, c in zip(problems, correct)}, K, len(problems) - len(kept), directory,
                          one_pass=cfg.train.one_pass, first_step=first_step)


def one_pass_walk(cfg: ExperimentConfig, round_: int) -> tuple[WeightedProblems, frozenset[str]]:
  """(data of round `round_`, ids drawn before it) of a one-pass run: round r (the r-th
  pass-rate recompute, at step r x pass_rate.recompute_every) weights the problems the rounds
  before it left undrawn, and its walk starts where theirs stopped."""
  every, B = cfg.pass_rate.recompute_every, cfg.train.batch_size
  drawn: frozenset[str] = frozenset()
  data = weighted_problems(cfg, 0)
  for r in range(1, round_ + 1):
    drawn |= {p.id for p in data.problems[:(r * every - data.first_step) * B]}
    data = weighted_problems(cfg, r, exclude=drawn, first_step=r * every)
  return data, drawn


def undrawn(cfg: ExperimentConfig, data: WeightedProblems, drawn: frozenset[str], step: int) -> list[Problem]:
  """One pass: the pool's problems not drawn by the end of `step` (what a recompute there reweights)."""
  drawn = drawn | {p.id for p in data.problems[:(step - data.first_step) * cfg.train.batch_size]}
  return [p for p in pool(cfg) if p.id not in drawn]


def one_pass_steps(cfg: ExperimentConfig, round_: int = 0) -> int:
  """The full batches a one-pass run has from the weights of `round_` (its step budget when no
  recompute changes them)."""
  return len(weighted_problems(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, one_pass=True)),
                               round_).problems) // cfg.train.batch_size


def offline_examples(problems: Sequence[Problem], data: WeightedProblems, refs: dict[str, dict], store: TeacherStore,
                     tokenizer, cfg: ExperimentConfig) -> list[Example]:
  """Student prompt + stored reference, with the stored teacher signal of each response token."""
  out = []
  for p in problems:
    if p.id not in refs or p.id not in store:
      continue  # no usable reference (e.g. unverified when verified_only): nothing to learn from
    prompt = prompts_lib.student_prompt(tokenizer, p, cfg.prompts)
    response = refs[p.id]["response_ids"]
    signal = store.get(p.id, response_ids=response)
    out.append(Example(np.asarray(prompt + response, np.int32), len(prompt), signal["ids"], signal["logprobs"],
                       signal["tail"], data.weight[p.id], data.correct[p.id]))
  return out


def on_policy_lengths(problems: Sequence[Problem], tokenizer, cfg: ExperimentConfig) -> tuple[int, int]:
  """(longest student prompt, teacher row length) over all of `problems`: passed to every on-policy
  step, they give the sampler and the teacher scorer one shape each, compiled once for the run."""
  student = max(len(prompts_lib.student_prompt(tokenizer, p, cfg.prompts)) for p in problems)
  teacher = max(len(prompts_lib.teacher_prompt(tokenizer, p, cfg.prompts)) for p in problems)
  return student, 1 << (teacher + cfg.train.rollout_sampling.max_new_tokens - 1).bit_length()


def on_policy_examples(problems: Sequence[Problem], data: WeightedProblems, sampler: Sampler, teacher: LoadedModel,
                       teacher_params, step: int, cfg: ExperimentConfig,
                       lengths: tuple[int, int] | None = None) -> tuple[list[Example], int]:
  """Fresh student responses scored by the frozen teacher; returns (examples, generated tokens).
  `lengths`: `on_policy_lengths` of all training problems (default: of these problems alone)."""
  tok = teacher.tokenizer
  student_prompts = [prompts_lib.student_prompt(tok, p, cfg.prompts) for p in problems]
  prompt_len, row_length = lengths if lengths is not None else on_policy_lengths(problems, tok, cfg)
  # The step enters the sampling key, not the config: a new config value would recompile.
  keys = [(rollouts_lib.problem_key(p.id) + 7919 * (step + 1)) % (1 << 31) for p in problems]
  rollouts = sampler.generate(student_prompts, cfg.train.rollout_sampling, prompt_keys=keys, progress=False,
                              prompt_len=prompt_len)
  responses = [r[0].tokens.tolist() for r in rollouts]
  teacher_prompts = [prompts_lib.teacher_prompt(tok, p, cfg.prompts) for p in problems]
  signals: dict[int, dict] = {}
  for batch in teacher_scoring.score_batches(
      teacher.graphdef, teacher_params, teacher.mesh, list(zip(teacher_prompts, responses)),
      k=cfg.teacher_signal.top_k, valid_vocab=teacher.valid_vocab, length=row_length,
      batch_rows=cfg.teacher_signal.batch_size, chunk_size=cfg.teacher_signal.chunk_size,
      temperature=cfg.train.temperature):
    signals.update(batch)
  examples = [Example(np.asarray(sp + r, np.int32), len(sp), signals[i]["ids"], signals[i]["logprobs"],
                      signals[i]["tail"], data.weight[p.id], data.correct[p.id])
              for i, (p, sp, r) in enumerate(zip(problems, student_prompts, responses))]
  return examples, sum(map(len, responses))


def load_offline(cfg: ExperimentConfig, teacher: LoadedModel) -> tuple[dict[str, dict], TeacherStore]:
  from paced_jax.teacher import stage as teacher_stage  # deferred: only the offline track needs the store
  if not os.path.exists(os.path.join(workspace.teacher_dir(cfg.workdir), artifacts.MANIFEST)):
    raise FileNotFoundError(f"{workspace.teacher_dir(cfg.workdir)}: no teacher store; run the teacher stage first")
  return reference.usable(cfg, reference.read(cfg.workdir)), teacher_stage.open_store(cfg, teacher)
