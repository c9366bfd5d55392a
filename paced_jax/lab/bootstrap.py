"""Bootstrap of the method lab: a teacher and a weaker student trained from scratch on worked solutions.

Both are trained with the PACED train step itself (train_step.py): cross-entropy on a worked
solution is the forward KL against a one-hot teacher in the sparse top-k form, k = 1 (the next
token), log-prob 0, tail mass 0. Nothing else about the step changes, so the lab exercises the
same code its experiments then use.

The corpus is an endless stream of lab problems from the *train* partition (problems/lab_arithmetic.py), levels
in equal shares. A fraction of the examples show the problem with the privileged context the
self-distillation teacher will get (prompts.teacher_prompt), so the initial student has learnt
to use it, as a pretrained model would have. The student differs from the teacher in size and
steps only; those two settings place its pass rates inside (0, 1).

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
from paced_jax.config import PromptConfig, TrainConfig, to_json
from paced_jax.model.config import ModelConfig, RopeConfig
from paced_jax.training.packing import Example, pack
from paced_jax.problems.records import in_split

KIND = "lab_model"


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
  teacher: ModelSpec = ModelSpec(hidden=192, intermediate=576, layers=3, heads=6, kv_heads=2, steps=3000)
  student: ModelSpec = ModelSpec(hidden=128, intermediate=384, layers=2, heads=4, kv_heads=2, steps=500)
  batch_size: int = 64          # sequences per step
  seq_len: int = 128            # packed row length
  lr: float = 2e-3
  warmup_steps: int = 100
  weight_decay: float = 0.01
  hint_fraction: float = 0.2    # examples shown with the self-distillation teacher's privileged context
  log_every: int = 50
  seed: int = 0


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
  """Training examples of step s: a pure function of (seed, s), so a restarted bootstrap is the same."""

  def __init__(self, tokenizer, prompts: PromptConfig, cfg: BootstrapConfig):
    self.tokenizer, self.prompts, self.cfg = tokenizer, prompts, cfg
    self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

  def problem(self, rng: random.Random):
    level = rng.choice(sorted(lab_arithmetic.LEVELS))
    while True:  # the train partition only: held-out expressions are never seen in training
      expr = lab_arithmetic.draw(level, rng)
      if in_split(expr, "train"):
        return lab_arithmetic.make_problem(expr, level, "train")

  def examples(self, step: int) -> list[Example]:
    rng = random.Random(self.cfg.seed * 1_000_003 + step)
    out = []
    for _ in range(self.cfg.batch_size):
      p = self.problem(rng)
      hinted = self.prompts.teacher_context != "none" and rng.random() < self.cfg.hint_fraction
      prompt = (prompts_lib.teacher_prompt if hinted else prompts_lib.student_prompt)(self.tokenizer, p, self.prompts)
      response = self.tokenizer.encode(p.solution, add_special_tokens=False) + [self.eos]
      out.append(one_hot_example(prompt, response))
    return out


def step_config(graphdef, spec: ModelSpec, cfg: BootstrapConfig, valid_vocab: int) -> ts.StepConfig:
  # Mean over tokens with weight 1: plain language-model cross-entropy.
  train = TrainConfig(steps=spec.steps, token_reduction="token_sum", loss_chunk=cfg.seq_len, lr=cfg.lr,
                      schedule="cosine", warmup_steps=min(cfg.warmup_steps, spec.steps // 2),
                      weight_decay=cfg.weight_decay, grad_clip=1.0)
  return ts.StepConfig(graphdef, train, weight_norm="none", divergence="fkl", valid_vocab=valid_vocab,
                       num_pass_buckets=1)


def train_model(spec: ModelSpec, cfg: BootstrapConfig, tokenizer, prompts: PromptConfig, mesh, seed: int,
                log_path: str | None = None) -> tuple[ModelConfig, dict]:
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
  corpus = Corpus(tokenizer, prompts, dataclasses.replace(cfg, seed=seed))
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


def expected_settings(role: str, spec: ModelSpec, cfg: BootstrapConfig, prompts: PromptConfig, seed: int) -> dict:
  return {"role": role, "spec": to_json(spec), "bootstrap": to_json(dataclasses.replace(cfg, teacher=None, student=None)),
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
  model_cfg, params = train_model(spec, cfg, tokenizer, prompts, mesh, seed, os.path.join(models_dir, f"{role}.train.jsonl"))
  hf_checkpoint.export_hf(params, model_cfg, out, tokenizer_dir=tok_dir)
  shutil.rmtree(tok_dir, ignore_errors=True)
  artifacts.write_manifest(out, KIND, **expected, seconds=time.perf_counter() - tic)
  return out


def bootstrap(models_dir: str, cfg: BootstrapConfig, prompts: PromptConfig, mesh) -> tuple[str, str]:
  """(teacher directory, student directory), trained once and cached under `models_dir`."""
  teacher = ensure_model(models_dir, "teacher", cfg.teacher, cfg, prompts, mesh, cfg.seed)
  student = ensure_model(models_dir, "student", cfg.student, cfg, prompts, mesh, cfg.seed + 1)
  return teacher, student
