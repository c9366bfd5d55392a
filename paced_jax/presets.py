"""What the paper presets in configs/ share: the paper's training defaults, the baseline and
schedule variants, and TPU-slice mesh variants (METHOD.md section 7).

A preset file names its models and its slices; `build` parses the `:variant` argument
(comma-separated, e.g. `configs/qwen3_distill.py:v5p-64,akl`) and refuses unknown or
conflicting variants with the accepted names.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import ml_collections

from paced_jax import config as config_lib, config_dict
from paced_jax.training import losses

# Paper training defaults (METHOD.md section 7). Learning rate per track: the paper's appendix gives
# 1e-7 for the distillation tracks (Qwen3, and Llama "with the same learning rate"); it gives no
# separate value for self-distillation, which keeps 1e-6, the authors' codebase default.
DISTILL_LR = 1e-7
SELF_DISTILL_LR = 1e-6
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
PROMPTS_PER_STEP = 256
MAX_RESPONSE_TOKENS = 8192
MAX_TRAIN_RESPONSE_TOKENS = 16384   # the paper trains on responses up to 16,384 tokens (variant `long`)
PROMPT_BUDGET = 512          # chat-templated math prompts are far shorter; longer ones are truncated
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{{}}."

METHOD_VARIANTS = ("uniform", "hard_filter", "akl", "two_stage")
LENGTH_VARIANTS = ("long",)  # packed rows of the paper's longest training responses
_WEIGHT_VARIANTS = ("uniform", "hard_filter", "akl")  # each replaces the PACED weights: pick one


def default_config(defaults=None) -> ml_collections.ConfigDict:
  """The defaults of an ExperimentConfig (or of a dataclass holding one, like the lab's) as a
  ConfigDict for config files to start from, with every registered divergence's hyperparameters
  under train.loss_params, so that the command line can set them (--config.train.loss_params.akl.mu=0.3)."""
  c = config_dict.to_config_dict(defaults if defaults is not None else config_lib.ExperimentConfig())
  params = {name: dataclasses.asdict(d.params()) for name, d in losses.DIVERGENCES.items()
            if dataclasses.fields(d.params)}

  def fill(node):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        if key == "train" and "loss_params" in value:
          value.loss_params = params
        else:
          fill(value)
  fill(c)
  return c


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU pod slice: how its devices form the mesh, and how many micro-batches fit a step in HBM."""
  data: int
  fsdp: int
  tensor: int
  micro_batches: int
  why: str = ""   # the memory reasoning (aot_check numbers), kept next to the choice
  # Rollouts (every sampling stage) from a paged KV cache: decode rows and page pool per device.
  # 0: the dense cache of SamplingConfig's defaults. On TPU a paged step reads each row's pages up
  # to its length (ragged paged attention) and a row holds the pages of its length, so a pool well
  # under rows x maximum length serves many more rows than a dense cache (launch/README.md).
  rollout_rows_per_device: int = 0
  rollout_cache_gib: float = 0.0


def paper_config(*, workdir: str, student: str, teacher: str, track: str, loss: str,
                 max_new_tokens: int = MAX_RESPONSE_TOKENS) -> ml_collections.ConfigDict:
  """The paper's defaults on top of the ExperimentConfig defaults; no mesh variant (one host).

  teacher "" is self-distillation: the frozen initial student sees the expert solution (the paper's
  Figure 3). A separate teacher model sees the plain problem, as in ordinary distillation.
  """
  c = default_config()
  c.workdir = workdir
  c.student = student
  c.teacher = teacher
  c.track = track
  # Placeholders: a training problem file with problem/answer columns (override on the command line).
  c.problems.source = "/data/train/math_train.jsonl"
  c.problems.n_train = 8192
  c.problems.n_heldout = 256
  c.prompts.system = ""
  c.prompts.student_template = "{problem}\n" + BOXED_INSTRUCTION
  c.prompts.answer_only_template = ("{problem}\n" + BOXED_INSTRUCTION +
                                    "\n\n(The correct final answer is {answer}.)")
  c.prompts.teacher_context = "solution" if not teacher else "none"
  c.prompts.enable_thinking = False       # Qwen chat template with thinking disabled
  c.verifier.extract = ["boxed"]          # answers are graded from the last \boxed{} only
  c.verifier.workers = 0                  # min(4, cpu count) grader processes per host
  c.model.compute_dtype = "bfloat16"
  c.model.param_dtype = "float32"         # f32 master weights and optimizer state
  c.model.remat = True
  for sampling in (c.pass_rate.sampling, c.reference.sampling, c.train.rollout_sampling, c.eval.sampling):
    sampling.max_new_tokens = max_new_tokens
  # Pass rate: K = 8 student rollouts at temperature 1.0, no top-p / top-k truncation.
  c.pass_rate.sampling.temperature = 1.0
  c.pass_rate.sampling.top_p = 1.0
  c.pass_rate.sampling.top_k = 0
  c.pass_rate.sampling.num_samples = 8
  c.train.rollout_sampling.temperature = 1.0
  c.train.rollout_sampling.top_p = 1.0
  c.train.rollout_sampling.top_k = 0
  c.train.rollout_sampling.num_samples = 1
  # Evaluation: mean@8 at temperature 0.7, top_p 0.8, top_k 20 on local benchmark files.
  c.eval.sampling.temperature = 0.7
  c.eval.sampling.top_p = 0.8
  c.eval.sampling.top_k = 20
  c.eval.sampling.num_samples = 8
  c.eval.benchmarks = [
      "/data/MATH-500/test.jsonl:name=math500,fields=math500",
      "/data/AIME24/aime_2024.parquet:name=aime24,fields=aime",
      "/data/AIME25/aime_2025.parquet:name=aime25,fields=aime",
  ]
  c.eval.retain_set = "/data/MMLU/mmlu_test.jsonl:n=1000"
  c.weights.scheme = "paced"
  c.teacher_signal.top_k = 64
  c.train.loss = loss
  c.train.batch_size = PROMPTS_PER_STEP
  # One packed row per prompt: no response is ever dropped. Rows are packed first-fit, so with
  # typical 1-4k-token responses the last rows stay empty; once the lengths are known, e.g.
  # --config.train.rows_per_step=128 halves the step's compute (keep it a multiple of the
  # micro-batches x data x fsdp).
  c.train.rows_per_step = 0
  c.train.seq_len = PROMPT_BUDGET + max_new_tokens
  c.train.lr = SELF_DISTILL_LR if not teacher else DISTILL_LR
  c.train.weight_decay = WEIGHT_DECAY
  c.train.grad_clip = GRAD_CLIP
  c.train.schedule = "constant"
  c.train.steps = 100                     # set for your data: epochs x kept problems / 256
  c.train.checkpoint_every = 10
  c.train.loss_chunk = 128
  # One host (e.g. a v5p-8 or v6e-8 VM): parameters sharded over its chips; 32 micro-batches of 8
  # rows put 1-2 rows of ~8.7k tokens on a device at a time.
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.train.micro_batches = 32
  return c


def build(c: ml_collections.ConfigDict, variant: str, slices: Mapping[str, Slice], file: str) -> ml_collections.ConfigDict:
  """Apply the comma-separated `variant` to the preset `c` built by `file`."""
  options = [o.strip() for o in variant.split(",") if o.strip()]
  unknown = [o for o in options if o not in METHOD_VARIANTS and o not in LENGTH_VARIANTS and o not in slices]
  if unknown:
    raise ValueError(f"{file}: unknown variant(s) {unknown}; expected a comma-separated subset of "
                     f"{', '.join(METHOD_VARIANTS + LENGTH_VARIANTS)} and at most one TPU slice of "
                     f"{', '.join(slices)}")
  weight_options = [o for o in options if o in _WEIGHT_VARIANTS]
  if len(set(weight_options)) > 1:
    raise ValueError(f"{file}: variants {weight_options} each replace the PACED weights; pick one")
  slice_options = [o for o in options if o in slices]
  if len(set(slice_options)) > 1:
    raise ValueError(f"{file}: variants {slice_options} are different TPU slices; pick one")

  if "uniform" in options:
    c.weights.scheme = "uniform"
  if "hard_filter" in options:
    c.weights.scheme = "hard_filter"
  if "akl" in options:   # the AKL baseline: adaptive forward/reverse mix, uniform weights
    c.weights.scheme = "uniform"
    c.train.loss = "akl"
  if "two_stage" in options:  # forward KL on teacher references, then reverse KL on-policy
    c.track = "two_stage"
    # The paper's two-stage tables: half the steps each, pass rates recomputed once at the midpoint
    # (a reference, so --config.train.steps=N moves it; for odd N a second recompute at step N - 1).
    c.train.stage1_fraction = 0.5
    c.pass_rate.recompute_every = c.train.get_ref("steps") // 2
  if "long" in options:  # rows for the paper's 16,384-token training responses (kernel attention needed)
    c.train.seq_len = PROMPT_BUDGET + MAX_TRAIN_RESPONSE_TOKENS
  method = sorted({o for o in options if o in METHOD_VARIANTS})
  if method:
    c.workdir += "_" + "_".join(method)
  if slice_options:
    s = slices[slice_options[0]]
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = s.data, s.fsdp, s.tensor
    c.mesh.distributed = True   # every worker of the slice runs the same command
    c.train.micro_batches = s.micro_batches
    if s.rollout_rows_per_device:
      for sampling in (c.pass_rate.sampling, c.reference.sampling, c.train.rollout_sampling, c.eval.sampling):
        sampling.kv_cache, sampling.rows_per_device, sampling.cache_gib = (
            "paged", s.rollout_rows_per_device, s.rollout_cache_gib)
  return c
