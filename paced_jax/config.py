"""Experiment configuration: ml_collections files in configs/ -> one frozen dataclass tree.

Each module owns the dataclass for its own settings (SamplingConfig in sampler.py, WeightConfig
in weights.py, ...); this module composes them and converts a ConfigDict into them, refusing
unknown or mistyped fields with the dotted path of the offending key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections

from paced_jax.mesh import MeshConfig
from paced_jax.sampler import SamplingConfig
from paced_jax.snr_stats import SNRConfig
from paced_jax.verifier import VerifierConfig
from paced_jax.weights import WeightConfig


class ConfigError(ValueError):
  """A config field is unknown or has the wrong type."""


@dataclasses.dataclass(frozen=True)
class ProblemsConfig:
  source: str = "builtin:easy_arithmetic"   # builtin:<name> or a .jsonl / .json / .parquet file
  n_train: int = 256
  n_heldout: int = 64
  seed: int = 0
  field_id: str = "id"
  field_prompt: str = "problem"
  field_answer: str = "answer"
  field_solution: str = "solution"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How problems become chat prompts for the student and the privileged teacher."""
  system: str = ""                       # "" = the chat template's default system prompt
  student_template: str = "{problem}"
  teacher_context: str = "answer_only"   # none | answer_only | solution
  answer_only_template: str = "{problem}\n\n(The correct final answer is {answer}. Solve it step by step.)"
  solution_template: str = "{problem}\n\nHere is an expert solution:\n{solution}\n\nNow solve it yourself."
  enable_thinking: bool = False          # Qwen3 chat template switch


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False


@dataclasses.dataclass(frozen=True)
class PassRateConfig:
  sampling: SamplingConfig = SamplingConfig()
  recompute_every: int = 0       # 0 = once, on the initial student
  keep_responses: int = 2        # responses kept per problem, for inspection


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
  sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, num_samples=1)
  verified_only: bool = False    # keep only verified-correct teacher references


@dataclasses.dataclass(frozen=True)
class TeacherSignalConfig:
  top_k: int = 64
  logprob_dtype: str = "float16"    # float16 | bfloat16 (float16: 10x less rounding error, bench/README.md)
  chunk_size: int = 128             # sequence chunk for the [T, V] logits
  batch_size: int = 8
  problems_per_shard: int = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100
  batch_size: int = 8               # problems (sequences) per step, global
  rows_per_step: int = 0            # packed [rows, seq_len] rows they fill; 0 = batch_size
  micro_batches: int = 1            # gradient accumulation
  seq_len: int = 256                # packed row length
  loss: str = "forward_kl"          # forward_kl | reverse_kl | akl | jsd
  akl_mu: float = 0.5
  jsd_beta: float = 0.5
  temperature: float = 1.0
  token_reduction: str = "seq_mean"  # seq_mean | token_sum
  loss_chunk: int = 128
  lr: float = 1e-6
  schedule: str = "constant"        # constant | cosine
  warmup_steps: int = 0
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  stage1_fraction: float = 0.5      # two-stage: forward KL on references for this fraction
  rollout_sampling: SamplingConfig = SamplingConfig(num_samples=1, max_new_tokens=128)
  checkpoint_every: int = 50
  log_every: int = 1
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, num_samples=8)
  greedy_pass1: bool = False
  benchmarks: tuple[str, ...] = ("heldout",)   # 'heldout' or benchmark files
  retain_set: str = ""                          # MMLU-format multiple-choice file ('' = skip)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  workdir: str = "workdir/demo"
  student: str = "demo:smollm2"     # a Hugging Face directory, or demo:smollm2 (bundled GGUF)
  teacher: str = ""                 # "" = the initial student (self-distillation)
  track: str = "self_distill"       # distill | self_distill | two_stage
  problems: ProblemsConfig = ProblemsConfig()
  prompts: PromptConfig = PromptConfig()
  model: ModelOptions = ModelOptions()
  mesh: MeshConfig = MeshConfig()
  verifier: VerifierConfig = VerifierConfig()
  pass_rate: PassRateConfig = PassRateConfig()
  weights: WeightConfig = WeightConfig()
  reference: ReferenceConfig = ReferenceConfig()
  teacher_signal: TeacherSignalConfig = TeacherSignalConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  snr: SNRConfig = SNRConfig()
  run_snr: bool = False             # the pipeline measures gradient SNR at the initial student


_CHOICES = {
    "track": ("distill", "self_distill", "two_stage"),
    "prompts.teacher_context": ("none", "answer_only", "solution"),
    "train.loss": ("forward_kl", "reverse_kl", "akl", "jsd"),
    "train.token_reduction": ("seq_mean", "token_sum"),
    "train.schedule": ("constant", "cosine"),
    "teacher_signal.logprob_dtype": ("bfloat16", "float16"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
}


def _convert(tp: Any, value: Any, path: str) -> Any:
  if dataclasses.is_dataclass(tp):
    return to_dataclass(tp, value, path)
  origin = typing.get_origin(tp)
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{path}: expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    return tuple(value)
  if origin in (typing.Union, types.UnionType):
    return value
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
    raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
  return value


def to_dataclass(cls: type, value: Any, path: str = "config") -> Any:
  """Convert a ConfigDict / dict / dataclass into `cls`, checking names, types and choices."""
  if isinstance(value, cls):
    return value
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if dataclasses.is_dataclass(value):
    value = dataclasses.asdict(value)
  if not isinstance(value, dict):
    raise ConfigError(f"{path}: expected a group of fields, got {value!r}")
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(value) - names)
  if unknown:
    raise ConfigError(f"{path}.{unknown[0]}: unknown field; {cls.__name__} has {', '.join(sorted(names))}")
  kwargs = {}
  for name, v in value.items():
    sub = f"{path}.{name}"
    kwargs[name] = _convert(hints[name], v, sub)
    choices = _CHOICES.get(sub.removeprefix("config."))
    if choices and kwargs[name] not in choices:
      raise ConfigError(f"{sub}: {kwargs[name]!r} is not one of {', '.join(choices)}")
  return cls(**kwargs)


def to_config_dict(cfg: Any) -> ml_collections.ConfigDict:
  """The defaults of a dataclass tree as a ConfigDict, for config files to start from."""
  def plain(x):
    if dataclasses.is_dataclass(x):
      return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, tuple):
      return tuple(plain(v) for v in x)  # ml_collections parses command-line overrides of tuples only
    return x
  return ml_collections.ConfigDict(plain(cfg))


def experiment(config_dict: ml_collections.ConfigDict) -> ExperimentConfig:
  return to_dataclass(ExperimentConfig, config_dict)


def to_json(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)
