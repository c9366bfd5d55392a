"""Smoke config: a random tiny model with a character tokenizer; the whole pipeline in ~1 minute.

  python -m paced_jax.tools.pipeline --config=configs/tiny.py
  python -m paced_jax.tools.pipeline --config=configs/tiny.py:distill --config.workdir=/tmp/t
"""

from paced_jax import presets


def get_config(variant: str = ""):
  c = presets.default_config()
  c.workdir = "workdir/tiny"
  c.student = "tiny:qwen3:nano:0"
  c.track = "two_stage"
  c.mesh.data = -1
  c.problems.source = "builtin:easy_arithmetic_1digit"
  c.prompts.teacher_context = "answer_only"   # its problems have no worked solutions
  c.problems.n_train = 24
  c.problems.n_heldout = 8
  c.verifier.extract = ["boxed", "answer_line", "last_number"]
  c.verifier.workers = 1
  for sampling in (c.pass_rate.sampling, c.reference.sampling, c.train.rollout_sampling, c.eval.sampling):
    sampling.max_new_tokens = 8
    sampling.batch_rows = 32
    sampling.prompt_buckets = [64, 128]
  c.pass_rate.sampling.num_samples = 4
  c.eval.sampling.num_samples = 2
  # An untrained model passes nothing: the Beta(1,1) posterior mean keeps every weight above 0.
  c.weights.posterior_mean = True
  c.teacher_signal.top_k = 8
  c.teacher_signal.chunk_size = 32
  c.train.steps = 6
  c.train.batch_size = 8
  c.train.seq_len = 128
  c.train.lr = 1e-3
  c.train.checkpoint_every = 3
  c.train.loss_chunk = 32
  if variant == "distill":
    c.track = "distill"
    c.teacher = "tiny:qwen3:nano:1"
  elif variant not in ("", "two_stage"):
    raise ValueError(f"configs/tiny.py: unknown variant {variant!r} (expected '', 'two_stage' or 'distill')")
  return c
