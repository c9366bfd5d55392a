"""The built-in demo: SmolLM2-135M-Instruct distils itself on easy arithmetic with PACED weights.

Self-distillation with the ground-truth answer in the teacher's context, the two-stage schedule
(forward KL on the answer-aware teacher's own responses, then reverse KL on the student's
on-policy responses). Problems are easy enough that the student's pass rates spread over (0, 1).

  python -m paced_jax.tools.pipeline --config=configs/demo.py          # 8.5 min, 3.7 GiB peak on 2 CPU cores
  python -m paced_jax.tools.pipeline --config=configs/demo.py:quick    # < 5 min
Baselines on the same data and budget: :uniform, :hard_filter, :akl (combine with quick: quick,uniform).
"""

from paced_jax import presets


def get_config(variant: str = ""):
  options = set(filter(None, variant.split(",")))
  unknown = options - {"quick", "uniform", "hard_filter", "akl"}
  if unknown:
    raise ValueError(f"configs/demo.py: unknown variant(s) {sorted(unknown)}; expected quick, uniform, hard_filter, akl")
  c = presets.default_config()
  c.workdir = "workdir/demo"
  c.student = "demo:smollm2"
  c.track = "two_stage"
  c.mesh.data = -1
  c.problems.source = "builtin:easy_arithmetic"
  c.prompts.teacher_context = "answer_only"   # its problems have no worked solutions
  c.problems.n_train = 128
  c.problems.n_heldout = 48
  c.verifier.extract = ["boxed", "answer_line", "last_number"]
  c.verifier.workers = 2
  c.verifier.timeout_s = 5.0
  # The 135M student answers a "number only" prompt in a few tokens; longer budgets only add rambling.
  for sampling in (c.pass_rate.sampling, c.reference.sampling, c.train.rollout_sampling, c.eval.sampling):
    sampling.max_new_tokens = 24
    sampling.batch_rows = 64
    sampling.prompt_buckets = [48, 64, 96, 128]
  c.pass_rate.sampling.temperature = 1.0
  c.pass_rate.sampling.num_samples = 8
  c.eval.sampling.num_samples = 4
  c.eval.benchmarks = ["heldout"]
  c.eval.retain_set = "builtin:arith_mc:n=60"
  c.weights.scheme = "paced"
  c.teacher_signal.top_k = 32
  # Positions per [rows, chunk, vocab] logits block: 16 keeps it at 50 MB; 32 made on-policy scoring
  # the train stage's peak (demo:quick 4.5 GiB RSS, 4.3 with 16; issue 17).
  c.teacher_signal.chunk_size = 16
  c.teacher_signal.batch_size = 16
  # A chat-rendered problem is 46 tokens: with its answer (<= 24 tokens) two fit in a 144-token row.
  c.train.steps = 16
  c.train.batch_size = 16
  c.train.rows_per_step = 8
  c.train.seq_len = 144
  c.train.lr = 2e-5
  c.train.weight_decay = 0.0
  c.train.warmup_steps = 2
  # Peak memory (issue 17), measured by `aot_check --config=configs/demo.py --devices=1 --steps=train`:
  # one batch with each layer's activations remade in the backward pass (remat) and 24-position
  # logits blocks: step temporaries 0.76 GiB, against 1.45 for 4 micro-batches without remat (their
  # summed-gradient carry is a second gradient-sized buffer) and 2.06 for one batch without remat.
  c.model.remat = True
  c.train.micro_batches = 1
  c.train.loss_chunk = 24
  c.train.checkpoint_every = 8
  if "quick" in options:
    c.workdir = "workdir/demo_quick"
    c.problems.n_train = 32
    c.problems.n_heldout = 16
    for sampling in (c.pass_rate.sampling, c.reference.sampling, c.train.rollout_sampling, c.eval.sampling):
      sampling.max_new_tokens = 16
    c.eval.sampling.num_samples = 2
    c.eval.retain_set = "builtin:arith_mc:n=24"
    c.train.steps = 4
    c.train.batch_size = 8
    c.train.rows_per_step = 4
    c.train.seq_len = 128  # 46 + 16 tokens: still two per row
    c.train.checkpoint_every = 2
  if "uniform" in options:
    c.weights.scheme = "uniform"
  if "hard_filter" in options:
    c.weights.scheme = "hard_filter"
  if "akl" in options:
    c.weights.scheme = "uniform"
    c.train.loss = "akl"
  if options - {"quick"}:
    c.workdir += "_" + "_".join(sorted(options - {"quick"}))
  return c
