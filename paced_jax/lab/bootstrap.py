"""Bootstrap of the method lab: a teacher and a weaker student trained from scratch on worked solutions.

Both are trained with the PACED train step itself (train_step.py): cross-entropy on a worked
solution is the forward KL against a one-hot teacher in the sparse top-k form, k = 1 (the next
token), log-prob 0, tail mass 0. Nothing else about the step changes, so the lab exercises the
same code its experiments then use.

The corpus is an endless stream of lab problems from the *train* partition (problems/lab_arithmetic.py),
levels in equal shares. The two models learn different solution formats (a style gap): the
teacher the worked one (`teacher_format`), the student a terser, worse one (`student_format`), so
distillation from the teacher teaches a decomposition shared by every problem, not only each
problem's arithmetic.

The student is also the frozen self-distillation teacher, shown the problem with its worked
solution (prompts.teacher_prompt). So that it uses that context, and not only on the solution
path, a `hint_fraction` of its examples show the context, and their target is the worked
solution; an `off_path_fraction` of those begin the response with a prefix that left the path,
a few lines in the student's own format or worked lines ending in a wrong result, and the target
(the loss covers only what follows the prefix) goes on from the context's correct running value
to the right answer (Corpus.off_path). The student differs from the teacher in format, size and
steps; size and steps place its pass rates inside (0, 1).

Each model lands in WORKDIR/models/<role>/ as a Hugging Face directory (config, safetensors,
the lab tokenizer) with a manifest of the settings that made it; a matching one is reused, one
made with other settings refused. Training loss goes to WORKDIR/models/<role>.train.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time

import jax
import numpy as np
from flax import nnx

from paced_jax import artifacts, mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.problems import lab_arithmetic
from paced_jax.lab import tokenizer as lab_tokenizer
from paced_jax.model import decoder as model_lib
from paced_jax.problems import prompts as prompts_lib
from paced_jax.model import tokenization
from paced_jax.training import train_step as ts
from paced_jax.config import PromptConfig, TrainConfig
from paced_jax.config_dict import to_json
from paced_jax.model.config import ModelConfig, RopeConfig
from paced_jax.training.packing import Example, pack
from paced_jax.problems.records import in_split

KIND = "lab_model"
ROLES = ("teacher", "student")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Shape and training length of one bootstrapped model."""
  family: str = "qwen3"      # llama | qwen2 | qwen3
  hidden: int = 128
  intermediate: int = 384
  layers: int = 2
  heads: int = 4
  kv_heads: int = 2
  steps: int = 600


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
  # Sized for a 2-core CPU shared with other jobs: on the worked format the teacher's held-out
  # accuracy turns up after ~450 steps (8 % at 400, 58 % at 600, 71 % at 800 of an 800-step run).
  # A 1000-step student (hint_fraction 0.3) stayed at 7.5 % held-out, mean p < 0.05 on levels 3, 4, 6.
  teacher: ModelSpec = ModelSpec(hidden=128, intermediate=384, layers=3, heads=4, kv_heads=2, steps=1600)
  student: ModelSpec = ModelSpec(hidden=128, intermediate=384, layers=2, heads=4, kv_heads=2, steps=1500)
  teacher_format: str = "worked"   # lab_arithmetic.FORMATS: the teacher's solutions (and the context's)
  student_format: str = "terse"    # the student's own solutions, without context
  batch_size: int = 32          # sequences per step
  seq_len: int = 128            # packed row length
  lr: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01
  hint_fraction: float = 0.2    # student examples shown the self-distillation teacher's privileged context
  off_path_fraction: float = 0.5  # of those, responses that start off the solution path (Corpus.off_path)
  log_every: int = 50
  seed: int = 0

  def __post_init__(self):
    for name in ("teacher_format", "student_format"):
      if getattr(self, name) not in lab_arithmetic.FORMATS:
        raise ValueError(f"bootstrap.{name} {getattr(self, name)!r}: expected one of {sorted(lab_arithmetic.FORMATS)}")
    for name in ("hint_fraction", "off_path_fraction"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"bootstrap.{name} {getattr(self, name)}: expected a fraction in [0, 1]")


def model_config(spec: ModelSpec, tokenizer) -> ModelConfig:
  eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
  return ModelConfig(
      model_type=spec.family, vocab_size=lab_tokenizer.embedding_rows(tokenizer), hidden_size=spec.hidden,
      intermediate_size=spec.intermediate, num_layers=spec.layers, num_heads=spec.heads, num_kv_heads=spec.kv_heads,
      head_dim=spec.hidden // spec.heads, rms_norm_eps=1e-6, rope=RopeConfig(theta=1e4), tie_word_embeddings=True,
      qkv_bias=spec.family == "qwen2", qk_norm=spec.family == "qwen3", max_position_embeddings=512,
      bos_token_id=None, eos_token_ids=(eos,))


def one_hot_example(prompt_ids, response_ids) -> Example:
  """Cross-entropy as distillation: the 'teacher' puts probability 1 on the next token (k = 1)."""
  response = np.asarray(response_ids, np.int32)
  n = len(response)
  return Example(np.asarray(list(prompt_ids) + list(response_ids), np.int32), len(prompt_ids), response[:, None],
                 np.zeros((n, 1), np.float32), np.zeros((n,), np.float32), 1.0)


class Corpus:
  """Training examples of step s: a pure function of (seed, s), so a restarted bootstrap is the same.

  The teacher's are its format's solutions without context; the student's are its own format's,
  except a `hint_fraction` shown the context (on and off the solution path).
  """

  def __init__(self, tokenizer, prompts: PromptConfig, cfg: BootstrapConfig, role: str = "student"):
    if role not in ROLES:
      raise ValueError(f"bootstrap role {role!r}: expected one of {ROLES}")
    self.tokenizer, self.prompts, self.cfg, self.role = tokenizer, prompts, cfg, role
    self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    self.format = lab_arithmetic.FORMATS[cfg.teacher_format if role == "teacher" else cfg.student_format]
    self.hinted = role == "student" and prompts.teacher_context != "none"

  def problem(self, rng: random.Random):
    level = rng.choice(sorted(lab_arithmetic.LEVELS))
    while True:  # the train partition only: held-out expressions are never seen in training
      expr = lab_arithmetic.draw(level, rng)
      if in_split(expr, "train"):
        return expr, lab_arithmetic.make_problem(expr, level, "train")

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False)

  def examples(self, step: int) -> list[Example]:
    rng = random.Random(self.cfg.seed * 1_000_003 + step)
    out = []
    for _ in range(self.cfg.batch_size):
      expr, p = self.problem(rng)
      if self.hinted and rng.random() < self.cfg.hint_fraction:
        prompt = prompts_lib.teacher_prompt(self.tokenizer, p, self.prompts)
        prefix, target = off_path(expr, rng) if rng.random() < self.cfg.off_path_fraction else ("", p.solution)
        # The prefix is part of the prompt: no loss on it, only on the way back to the answer.
        prompt, response = prompt + self.encode(prefix), self.encode(target)
      else:
        prompt = prompts_lib.student_prompt(self.tokenizer, p, self.prompts)
        response = self.encode(self.format(expr))
      out.append(one_hot_example(prompt, response + [self.eos]))
    return out


def off_path(expr: str, rng: random.Random) -> tuple[str, str]:
  """(a response prefix off the worked path, the worked continuation to the right answer).

  Half the time the prefix is the first k operations in the student's terse format and the
  continuation the worked lines of the rest; half the time it is the worked lines up to one whose
  result is wrong, and the continuation the worked lines after it, which start from the correct
  value (the context's), not the wrong one.
  """
  ops = lab_arithmetic.worked_ops(expr)
  answer = lab_arithmetic.answer_line(expr)
  if rng.random() < 0.5:
    k = rng.randint(1, len(ops))
    prefix = lab_arithmetic.terse_lines(expr)[:k]
    rest = [line for lines, _ in ops[k:] for line in lines]
  else:
    lines = [line for lines, _ in ops for line in lines]
    j = rng.randrange(len(lines))
    lhs, result = lines[j].split("=")
    wrong = int(result) + rng.choice([d for d in (-10, -2, -1, 1, 2, 10) if int(result) + d >= 0])
    prefix = lines[:j] + [f"{lhs}={wrong}"]
    rest = lines[j + 1:]
  return "\n".join(prefix) + "\n", "\n".join(rest + [answer])


def step_config(graphdef, spec: ModelSpec, cfg: BootstrapConfig, valid_vocab: int) -> ts.StepConfig:
  # Mean over tokens with weight 1: plain language-model cross-entropy.
  train = TrainConfig(steps=spec.steps, token_reduction="token_sum", loss_chunk=cfg.seq_len, lr=cfg.lr,
                      schedule="cosine", warmup_steps=min(cfg.warmup_steps, spec.steps // 2),
                      weight_decay=cfg.weight_decay, grad_clip=1.0)
  return ts.StepConfig(graphdef, train, weight_norm="none", divergence="fkl", valid_vocab=valid_vocab,
                       num_pass_buckets=1)


def train_model(spec: ModelSpec, cfg: BootstrapConfig, tokenizer, prompts: PromptConfig, mesh, seed: int,
                log_path: str | None = None, role: str = "student") -> tuple[ModelConfig, dict]:
  """Train one model from random init; returns (its config, trained parameters as a pure dict)."""
  model_cfg = model_config(spec, tokenizer)
  model = model_lib.init_decoder(model_cfg, seed)
  graphdef, state = nnx.split(model)
  shardings = nnx.to_pure_dict(mesh_lib.state_shardings(state, mesh))
  params = jax.device_put(nnx.to_pure_dict(state), shardings)
  scfg = step_config(graphdef, spec, cfg, len(tokenizer))
  train_state = ts.init_state(params, scfg, seed)
  sharding = ts.state_shardings(train_state, shardings, mesh, scfg)
  train_state = jax.device_put(train_state, sharding)
  step_fn = ts.jit_train_step(scfg, sharding, mesh)
  batch_sharding = ts.Batch.shardings(mesh)
  corpus = Corpus(tokenizer, prompts, dataclasses.replace(cfg, seed=seed), role)
  rows = -(-cfg.batch_size // 2)  # two worked solutions fit a row on average; the rest wait
  pad = tokenization.pad_id(tokenizer)
  log = open(log_path, "w") if log_path else None
  tic, losses = time.perf_counter(), []
  try:
    for s in range(spec.steps):
      batch, dropped = pack(corpus.examples(s), rows, cfg.seq_len, 1, pad_id=pad)
      train_state, metrics = step_fn(train_state, jax.device_put(batch, batch_sharding))
      if (s + 1) % cfg.log_every == 0 or s + 1 == spec.steps:
        m = jax.device_get(metrics)
        losses.append(float(m["loss"]))
        record = {"step": s + 1, "loss": float(m["loss"]), "sequences": float(m["sequences"]),
                  "dropped": dropped, "seconds": time.perf_counter() - tic}
        if log:
          log.write(json.dumps(record) + "\n")
          log.flush()
        print(f"  step {s + 1}/{spec.steps}: loss {record['loss']:.4f} ({record['seconds']:.0f} s)", flush=True)
  finally:
    if log:
      log.close()
  return model_cfg, jax.device_get(train_state.params)


# Settings that only shape the student's corpus: a teacher made under other values is still the same teacher.
STUDENT_ONLY = ("student_format", "hint_fraction", "off_path_fraction")


def expected_settings(role: str, spec: ModelSpec, cfg: BootstrapConfig, prompts: PromptConfig, seed: int) -> dict:
  shared = to_json(dataclasses.replace(cfg, teacher=None, student=None))
  if role == "teacher":
    shared = {k: v for k, v in shared.items() if k not in STUDENT_ONLY}
  return {"role": role, "spec": to_json(spec), "bootstrap": shared,
          "prompts": to_json(prompts), "seed": seed, "tasks": lab_arithmetic.settings(),
          "vocabulary": lab_tokenizer.vocabulary()}


def ensure_model(models_dir: str, role: str, spec: ModelSpec, cfg: BootstrapConfig, prompts: PromptConfig,
                 mesh, seed: int) -> str:
  """WORKDIR/models/<role>/: reused when made with the same settings, else trained (refused if different)."""
  out = os.path.join(models_dir, role)
  expected = expected_settings(role, spec, cfg, prompts, seed)
  if os.path.exists(os.path.join(out, artifacts.MANIFEST)):
    artifacts.expect_fields(os.path.join(out, artifacts.MANIFEST), artifacts.read_manifest(out, KIND), expected)
    return out
  tok_dir = os.path.join(models_dir, ".tokenizer")
  lab_tokenizer.save(tok_dir)
  tokenizer = tokenization.load_tokenizer(tok_dir)
  print(f"bootstrap {role}: {spec.layers} layers, d={spec.hidden}, {spec.steps} steps", flush=True)
  tic = time.perf_counter()
  model_cfg, params = train_model(spec, cfg, tokenizer, prompts, mesh, seed, os.path.join(models_dir, f"{role}.train.jsonl"),
                                  role)
  hf_checkpoint.export_hf(params, model_cfg, out, tokenizer_dir=tok_dir)
  shutil.rmtree(tok_dir, ignore_errors=True)
  artifacts.write_manifest(out, KIND, **expected, seconds=time.perf_counter() - tic)
  return out


def bootstrap(models_dir: str, cfg: BootstrapConfig, prompts: PromptConfig, mesh) -> tuple[str, str]:
  """(teacher directory, student directory), trained once and cached under `models_dir`."""
  teacher = ensure_model(models_dir, "teacher", cfg.teacher, cfg, prompts, mesh, cfg.seed)
  student = ensure_model(models_dir, "student", cfg.student, cfg, prompts, mesh, cfg.seed + 1)
  return teacher, student
