"""The method lab: PACED vs its baselines on synthetic arithmetic, with seeds, on a laptop CPU.

  python -m paced_jax.tools.lab --config=configs/lab.py                 # the full table (~32 min here, bootstrap included)
  python -m paced_jax.tools.lab --config=configs/lab.py:smoke           # a few minutes: 1 seed, 2 methods
  python -m paced_jax.tools.lab --config=configs/lab.py report          # rebuild the report only
Any field can be overridden: --config.seeds='(0,1,2)' --config.unique_problems=1280.
The bootstrap (teacher + student, cached in WORKDIR/models) comes first (~10 min on 2 CPU cores);
docs/lab/README.md has the committed run's times and what it shows.
"""

from paced_jax import presets
from paced_jax.lab import config as lab_config


def get_config(variant: str = ""):
  c = presets.default_config(lab_config.LabConfig())
  c.workdir = "workdir/lab"
  c.retain_pool = 480
  e = c.experiment
  e.mesh.data = -1
  e.problems.source = "builtin:lab_arithmetic"
  # Fresh problems, none seen twice (train.one_pass; with 480 problems, 2.7 epochs made every method
  # lose held-out accuracy in v1). Equal-data runs use the pool's first unique_problems; the pool is
  # large enough that a method keeping 38% of the problems (v1: 56% inside (0, 1)) still finds
  # unique_problems of them for the equal-steps comparison (the generator's training split allows
  # ~4270). Sizes follow the time budget, not any method's result: 1920 problems (60 steps) measured
  # 51 s (distill), 88 s (self-distill), 79 s (two-stage) per run under load ~9, about 1.5 h for the
  # runs; 1280 (40 steps) brings the lab near the hour: 23-29 s (distill), 35-37 s (self-distill),
  # 46-90 s (two-stage, with its midpoint recompute over the undrawn pool) per run, same load.
  e.problems.n_train = 3360         # 560 per level
  # Five seeds (issue #16). Methods: uniform, the hard filter (the same zero-weight set as PACED, flat
  # weights inside: it separates "drop p = 0 and 1" from the kernel) and PACED (1,1): 5 runs per track
  # and seed (the zero-weight methods twice, equal data and equal steps), 75 in all. Chosen for time
  # alone, before any v2 result: AKL (a divergence, with uniform weights) and v1's Beta(2,2) and
  # Beta(0.5,2) kernels would add 15 runs each. --config.methods adds them back.
  c.seeds = (0, 1, 2, 3, 4)
  c.methods = ("uniform", "hard_filter", "paced")
  c.unique_problems = 1280          # 40 steps of 32, each problem once
  e.problems.n_heldout = 240        # 40 per level
  # Only words of the lab tokenizer (lab_tokenizer.WORDS) may appear in the templates.
  e.prompts.student_template = "{problem}"
  e.prompts.answer_only_template = "{problem}\nHint: answer is {answer}."
  e.prompts.solution_template = "{problem}\nSolution:\n{solution}"
  e.verifier.extract = ["answer_line"]
  e.verifier.math_verify = False    # exact grading: the answer line must be the number
  e.verifier.workers = 1
  for sampling in (e.pass_rate.sampling, e.reference.sampling, e.train.rollout_sampling, e.eval.sampling):
    sampling.max_new_tokens = 48    # the longest worked solution is 42 tokens + the end token
    sampling.batch_rows = 128
    sampling.prompt_buckets = [32, 64, 128]
  e.pass_rate.sampling.num_samples = 8
  e.eval.sampling.num_samples = 4
  e.teacher_signal.top_k = 16
  e.teacher_signal.chunk_size = 128
  e.teacher_signal.batch_size = 32
  e.train.batch_size = 32          # steps: unique_problems / batch_size (lab.runner.run_config)
  e.train.rows_per_step = 16        # sequences of 25-65 tokens, two or more per 128-token row
  e.train.seq_len = 128
  e.train.loss_chunk = 128
  # Measured in v1 on distill/uniform (held-out, base 40.0%): 40 steps at 5e-4 lost 5 points (a fresh
  # Adam state's first steps are sign-sized); 40 at 1e-4 gained 0.7; 100 at 2e-4 gained 6.8. Kept
  # for v2 as it was (uniform-only calibration on v1's models), not re-tuned on v2's runs.
  e.train.lr = 2e-4
  e.train.warmup_steps = 10
  e.train.weight_decay = 0.0
  # A stratified cap (32 per pass-rate bin, floor ~1/31): every problem of a 4200-problem pool would take
  # most of the hour at five SNR points (v1: 288 problems in 1.9 min). Raise it for more power.
  e.snr.num_problems = 288
  if variant == "smoke":
    # Minutes, not an hour: tiny barely-trained models, so most pass rates are 0 and the Beta(1,1)
    # posterior mean keeps PACED weights above 0 (as in configs/tiny.py).
    c.workdir = "workdir/lab_smoke"
    c.methods = ("uniform", "paced")
    c.seeds = (0,)
    c.retain_pool = 12
    for spec, steps in ((c.bootstrap.teacher, 12), (c.bootstrap.student, 6)):
      spec.hidden, spec.intermediate, spec.layers, spec.heads, spec.kv_heads, spec.steps = 32, 64, 1, 2, 1, steps
    c.bootstrap.batch_size = 16
    c.bootstrap.log_every = 6
    e.problems.n_train = 40
    c.unique_problems = 16
    e.problems.n_heldout = 12
    e.weights.posterior_mean = True
    for sampling in (e.pass_rate.sampling, e.reference.sampling, e.train.rollout_sampling, e.eval.sampling):
      sampling.max_new_tokens = 16
    e.pass_rate.sampling.num_samples = 4
    e.eval.sampling.num_samples = 2
    e.train.batch_size = 8
    e.train.rows_per_step = 8
    e.snr.num_problems = 8
    e.snr.resamples = 20
  elif variant == "full":
    c.workdir = "workdir/lab_full"
  elif variant:
    raise ValueError(f"configs/lab.py: unknown variant {variant!r} (expected '', 'smoke' or 'full')")
  return c
