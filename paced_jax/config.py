"""Experiment configuration: every setting of every stage, as one frozen dataclass tree.

Every setting is declared here, once, with its default, its bounds (checked in __post_init__) and
its allowed values (the choice lists, and CHOICES per field path); stages read them from the tree
and never redeclare them. Reading configs/*.py into this tree is config_dict.py's job. Lists that
belong to a stage's code (the divergence registry in training/losses.py) are checked by that stage,
which names the field. This module imports nothing from the package, so every layer may import it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
  """A config field is unknown, has the wrong type or is out of range (a user mistake, not a bug)."""


class FieldError(ConfigError):
  """A value out of range; config_dict.to_dataclass prefixes `field` with the group's dotted path."""

  def __init__(self, field: str, detail: str):
    super().__init__(f"{field}: {detail}")
    self.field, self.detail = field, detail


def _require(obj: Any, **bounds: str) -> None:
  """Check each named field against a bound like '>= 1', '> 0', '[0, 1]'."""
  for name, bound in bounds.items():
    v = getattr(obj, name)
    if bound.startswith("["):
      lo, hi = (float(x) for x in bound.strip("[]").split(","))
      ok = lo <= v <= hi
    else:
      op, limit = bound.split()
      ok = {">=": v >= float(limit), ">": v > float(limit)}[op]
    if not ok:
      raise FieldError(name, f"must be {'in ' if bound.startswith('[') else ''}{bound}, got {v!r}")


STRATEGIES = ("boxed", "answer_line", "last_number")   # answer extraction (evaluation/verifier.py)
WEIGHT_SCHEMES = ("paced", "uniform", "hard_filter")     # training/weights.py
WEIGHT_NORMS = ("dataset_mean", "batch", "none")         # also the loss's weight_norm (training/losses.py)

# logical name -> mesh axis (or None = replicated). FSDP shards the model dim of every matrix,
# tensor parallelism the heads, the MLP dim and the vocabulary.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  rules: tuple[tuple[str, Any], ...] = DEFAULT_RULES
  distributed: bool = False  # call jax.distributed.initialize() (multi-host pods)
  # Explicit multi-process settings (e.g. several processes on one machine); left at their
  # defaults, jax.distributed.initialize() detects them itself (TPU pods, SLURM, Open MPI).
  coordinator_address: str = ""  # host:port of process 0's coordinator service
  num_processes: int = 0
  process_id: int = -1


KV_CACHES = ("dense", "paged")
PAGED_ATTENTIONS = ("auto", "ragged", "gather")  # sampling/decoding.py: paged_attention
# Sampling settings that change how the work is laid out, never which tokens come out.
_SAMPLE_INDEPENDENT = ("batch_rows", "rows_per_device", "chunk_steps", "prompt_buckets", "kv_cache", "page_size",
                       "cache_gib", "paged_attention")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0              # 0 = no top-k
  greedy: bool = False
  max_new_tokens: int = 256
  num_samples: int = 8        # K samples per prompt
  batch_rows: int = 64        # rows decoding at once (rounded up to the batch-axis size)
  rows_per_device: int = 0    # > 0: rows = this x the batch-axis devices, instead of batch_rows
  chunk_steps: int = 16       # decode steps between host refills
  prompt_buckets: tuple[int, ...] = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
  kv_cache: str = "dense"     # dense: every row holds prompt bucket + max_new_tokens slots; paged: a page pool
  page_size: int = 16         # paged: slots per page (divides the prompt buckets: prompts fill whole pages)
  cache_gib: float = 0.0      # paged: the page pool per device; 0 = every row at full length (never evicts)
  paged_attention: str = "auto"  # paged: ragged (TPU kernel, reads pages up to each row's length) | gather | auto
  seed: int = 0

  def __post_init__(self):
    # batch_rows 0 is compiled_part's normal form; the sampler rounds any other value up.
    _require(self, num_samples=">= 1", max_new_tokens=">= 1", temperature=">= 0", top_p="> 0", top_k=">= 0",
             batch_rows=">= 0", chunk_steps=">= 1")
    _require(self, top_p="[0, 1]")
    if self.kv_cache not in KV_CACHES:
      raise ValueError(f"sampling.kv_cache: {self.kv_cache!r} is not one of {KV_CACHES}")
    if self.paged_attention not in PAGED_ATTENTIONS:
      raise ValueError(f"sampling.paged_attention: {self.paged_attention!r} is not one of {PAGED_ATTENTIONS}")

  def compiled_part(self) -> "SamplingConfig":
    """The settings the jitted functions see: host-only fields are normalised away, so stages
    that differ only in K, batching or buckets share compiled code."""
    return dataclasses.replace(self, num_samples=1, batch_rows=0, rows_per_device=0, prompt_buckets=(), cache_gib=0.0)

  def identity(self) -> dict:
    """The settings that determine the samples (batching and bucketing do not)."""
    return {k: v for k, v in dataclasses.asdict(self).items()
            if k not in _SAMPLE_INDEPENDENT}


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
  """How final answers are extracted and how long one item may take to grade.

  extract: strategies tried in order, the first that yields an answer wins (answer_extraction.py):
    "boxed" every \\boxed{}, "answer_line" every "Answer:" line and "the answer is ..." sentence,
    "last_number" the number of a final sentence that states it ("= 12", "the total is 12", "12");
    turn that on for students that answer with a bare number. Different final answers (from any
    enabled strategy but last_number) are a hedge, graded wrong. A \\boxed{ that never closes
    or a half-written answer (truncated output) is no answer, whatever the other strategies find.
  timeout_s: wall-clock bound per item in Grader, from dispatch to a worker until its verdict.
  workers: Grader processes (0: min(4, cpu count)); started on demand, never more than items.
  max_answer_chars: longer extracted answers are judged wrong without math-verify.
  start_method: "spawn" or "forkserver".
  math_verify: False = exact grading: an answer that is not the truth's string or number is wrong
    (no worker processes; "100+8" is not "108"). True sends such answers to math-verify.
  """

  extract: tuple[str, ...] = ("boxed", "answer_line")
  timeout_s: float = 5.0
  workers: int = 0
  max_answer_chars: int = 1000
  start_method: str = "spawn"
  math_verify: bool = True

  def __post_init__(self):
    if not self.extract or any(s not in STRATEGIES for s in self.extract):
      raise ValueError(f"extract must be a non-empty tuple drawn from {STRATEGIES}, got {self.extract!r}")
    if not self.timeout_s > 0:
      raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
    if self.workers < 0:
      raise ValueError(f"workers must be >= 0, got {self.workers}")
    if self.start_method not in ("spawn", "forkserver"):
      raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {self.start_method!r}")


@dataclasses.dataclass(frozen=True)
class WeightConfig:
  """How pass rates become problem weights. `norm` is also the loss's `weight_norm` (losses.py)."""

  scheme: str = "paced"  # paced: p^alpha (1-p)^beta; uniform: 1; hard_filter: 1 if 0 < p < 1 else 0
  alpha: float = 1.0
  beta: float = 1.0
  norm: str = "dataset_mean"  # dataset_mean: mean 1 over kept problems; batch: in the step; none: raw
  keep_zero_weight: bool = False  # keep w = 0 problems in the data (ablations); dropped by default
  posterior_mean: bool = False  # estimate p by the Beta(1,1) posterior mean (c+1)/(K+2), not c/K

  def __post_init__(self):
    if self.scheme not in WEIGHT_SCHEMES:
      raise ValueError(f"unknown weight scheme {self.scheme!r}; expected one of {WEIGHT_SCHEMES}")
    if self.norm not in WEIGHT_NORMS:
      raise ValueError(f"unknown weight norm {self.norm!r}; expected one of {WEIGHT_NORMS}")
    _require(self, alpha=">= 0", beta=">= 0")


@dataclasses.dataclass(frozen=True)
class SNRConfig:
  """Gradient-SNR diagnostic (METHOD.md section 5, analysis/snr.py)."""
  num_problems: int = 0           # 0 = every problem with a pass rate; N = a seeded cap of N problems
  stratified: bool = True         # a cap draws round-robin over pass-rate bins, not by frequency
  equal_n: bool = False           # cut every bin to the smallest bin's size (bins of < 2 problems aside)
  step: int = -1                  # -1 = the initial student; N = the training checkpoint of step N (tag step<N>)
  dim: int = 4096                 # count-sketch dimensions; 0 = the selected gradient itself
  param_regex: str = ""           # re.search over parameter paths like 'layers/mlp/down_proj/kernel'
  seed: int = 0                   # problem selection, sketch hash, bootstrap
  resamples: int = 1000
  confidence: float = 0.9         # simultaneous over the bins (analysis/snr_stats.py)
  source: str = "auto"            # auto (offline if a teacher store exists) | offline | on_policy
  divergence: str = "auto"        # auto (the trainer's for that source) or a divergence name (training/losses.py)
  round: int = -1                 # pass-rate round; -1 = the latest
  rows_per_call: int = 8          # rows per compiled call
  vmap_rows: int = 1              # rows whose gradients are live at once (memory: vmap_rows x params)

  def __post_init__(self):
    if self.source not in ("auto", "offline", "on_policy"):
      raise ValueError(f"snr.source {self.source!r}: expected auto, offline or on_policy")
    if self.num_problems < 0 or self.num_problems == 1:
      raise ValueError(f"snr.num_problems {self.num_problems}: expected 0 (all) or >= 2")
    if self.dim < 0 or self.resamples < 1 or not 0 < self.confidence < 1 or self.step < -1:
      raise ValueError(f"snr: need dim >= 0, resamples >= 1, 0 < confidence < 1, step >= -1; got {self}")
    if self.rows_per_call < 1 or self.vmap_rows < 1:
      raise ValueError(f"snr: rows_per_call and vmap_rows must be >= 1, got {self.rows_per_call}, {self.vmap_rows}")


@dataclasses.dataclass(frozen=True)
class ProblemsConfig:
  source: str = "builtin:easy_arithmetic"   # builtin:<name>, a .jsonl/.json/.parquet file, a glob, a datasets dir
  n_train: int = 256
  n_heldout: int = 64
  seed: int = 0
  # With a layout, field_* settings changed from their defaults override its columns (prepare.field_map).
  fields: str = ""                          # published layout (records.FIELD_PRESETS, e.g. dapo, gsm8k); "" = field_*
  field_id: str = "id"                      # column of the problem id ("" = number the rows); a.b = nested
  field_prompt: str = "problem"             # column of the problem text (or chat messages: the user turn)
  field_answer: str = "answer"              # column of the ground-truth answer
  field_solution: str = "solution"          # column of a worked solution ("" = none)

  def __post_init__(self):
    _require(self, n_train=">= 1", n_heldout=">= 0")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How problems become chat prompts for the student and the privileged teacher."""
  system: str = ""                       # "" = the chat template's default system prompt
  student_template: str = "{problem}"
  # The self-distillation teacher's privileged context: none | answer_only | solution (the paper's;
  # a problem without a solution falls back to answer_only, with a warning: problems/prompts.py).
  teacher_context: str = "solution"
  answer_only_template: str = "{problem}\n\n(The correct final answer is {answer}. Solve it step by step.)"
  solution_template: str = "{problem}\n\nHere is an expert solution:\n{solution}\n\nNow solve it yourself."
  enable_thinking: bool = False          # Qwen3 chat template switch


# model/attention.py implements each; auto: splash on TPU, the Pallas kernel on GPU, on CPU dense
# for short rows, else blockwise.
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "blockwise", "splash", "gpu")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  compute_dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  attention: str = "auto"  # training and teacher-scoring attention, one of ATTENTION_IMPLEMENTATIONS
  # A hub id (`Qwen/Qwen3-1.7B`) is read from the local Hugging Face cache; True lets it download.
  allow_download: bool = False


@dataclasses.dataclass(frozen=True)
class PassRateConfig:
  sampling: SamplingConfig = SamplingConfig()
  recompute_every: int = 0       # 0 = once, on the initial student
  keep_responses: int = 2        # responses kept per problem, for inspection

  def __post_init__(self):
    _require(self, recompute_every=">= 0", keep_responses=">= 0")


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
  sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, num_samples=1)
  verified_only: bool = False    # keep only verified-correct teacher references


@dataclasses.dataclass(frozen=True)
class TeacherSignalConfig:
  top_k: int = 64
  logprob_dtype: str = "float16"    # float16 | bfloat16 (float16: 10x less rounding error, bench/README.md)
  chunk_size: int = 128             # sequence chunk for the [T, V] logits
  batch_size: int = 8               # rows per scoring batch; a multiple of the mesh's data * fsdp
  problems_per_shard: int = 256

  def __post_init__(self):
    if self.logprob_dtype not in ("float16", "bfloat16"):
      raise ValueError(f"teacher_signal.logprob_dtype {self.logprob_dtype!r}: expected float16 or bfloat16")
    if min(self.top_k, self.problems_per_shard, self.batch_size, self.chunk_size) < 1:
      raise ValueError(f"teacher_signal: top_k, problems_per_shard, batch_size and chunk_size must be >= 1: {self}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 100
  batch_size: int = 8               # problems (sequences) per step, global
  rows_per_step: int = 0            # packed [rows, seq_len] rows they fill; 0 = batch_size
  micro_batches: int = 1            # gradient accumulation
  seq_len: int = 256                # packed row length
  loss: str = "fkl"                 # a divergence of training/losses.py's registry: fkl | rkl | akl | jsd | ...
  # Hyperparameters per divergence, {name: {argument: value}} (e.g. akl.mu); unset = the function's
  # default. presets.default_config() lists every one, so --config.train.loss_params.akl.mu=0.3 works.
  loss_params: dict = dataclasses.field(default_factory=dict)
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
  # Batches: False = epochs of a seeded shuffle of the kept problems, repeating once they run out;
  # True = one pass: a seeded walk over the problems that draws each kept one at most once (a pass-rate
  # recompute reweights only the problems not drawn yet) and ends the run early at its last full batch.
  one_pass: bool = False
  pool: int = 0                     # draw from the first `pool` training problems only (0 = all)
  rollout_sampling: SamplingConfig = SamplingConfig(num_samples=1, max_new_tokens=128)
  checkpoint_every: int = 50
  seed: int = 0
  max_skipped_in_a_row: int = 3     # stop (diverged) after this many non-finite steps in a row

  def __post_init__(self):
    _require(self, steps=">= 1", batch_size=">= 1", rows_per_step=">= 0", micro_batches=">= 1", seq_len=">= 2",
             lr="> 0", temperature="> 0", loss_chunk=">= 1", warmup_steps=">= 0", weight_decay=">= 0",
             grad_clip="> 0", b1="[0, 1]", b2="[0, 1]", stage1_fraction="[0, 1]", checkpoint_every=">= 1",
             max_skipped_in_a_row=">= 1", pool=">= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.8, top_k=20, num_samples=8)
  greedy_pass1: bool = False
  benchmarks: tuple[str, ...] = ("heldout",)   # 'heldout' or benchmark files
  retain_set: str = ""                          # MMLU-format multiple-choice file ('' = skip)


@dataclasses.dataclass(frozen=True)
class WandbConfig:
  """Weights & Biases logging (the `wandb` extra), on process 0 beside metrics/ jsonl and TensorBoard."""
  project: str = ""        # "" = no W&B
  mode: str = "offline"    # offline (sync later with `wandb sync`) | online | disabled
  entity: str = ""         # "" = the account's default
  name: str = ""           # run name ("" = W&B picks one)
  dir: str = ""            # run files ("" = $WANDB_DIR, else <workdir>/metrics)


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
  run_snr: bool = False             # the pipeline measures gradient SNR at the initial student (and at snr.step)
  wandb: WandbConfig = WandbConfig()


# Allowed values of string fields checked by path when a ConfigDict is converted (config_dict.py).
CHOICES = {
    "track": ("distill", "self_distill", "two_stage"),
    "prompts.teacher_context": ("none", "answer_only", "solution"),
    "train.token_reduction": ("seq_mean", "token_sum"),
    "train.schedule": ("constant", "cosine"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.attention": ATTENTION_IMPLEMENTATIONS,
    "wandb.mode": ("offline", "online", "disabled"),
}
