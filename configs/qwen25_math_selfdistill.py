"""Paper preset: Qwen2.5-Math-7B-Instruct on-policy self-distillation, reverse KL.

METHOD.md section 7 (the paper's second headline row). Each step the current student samples a
response per problem; the frozen initial student (teacher "" = the student's own checkpoint),
shown the problem plus its expert solution (`solution`, the paper's Figure 3), scores the same
tokens. Problems need a solution column (--config.problems.field_solution); those without one fall
back to the answer (`answer_only`) with a warning, and --config.prompts.teacher_context=answer_only
makes that the rule.
Paths are placeholders; nothing is downloaded:
  --config.student=/models/Qwen2.5-Math-7B-Instruct
  --config.problems.source=/data/train/math_train.jsonl
  --config.eval.benchmarks=... / --config.eval.retain_set=...   (files under /data)

  launch/run.sh --tpu=my-pod --zone=us-east5-a pipeline --config=configs/qwen25_math_selfdistill.py:v5p-64
Variants (comma-separated): uniform, hard_filter, akl, two_stage, and one TPU slice: v5p-64,
v5p-128, v5e-256, v6e-64, v6e-256.

Length: Qwen2.5-Math-7B-Instruct has a 4096-token context (max_position_embeddings), so responses
are capped at 4096 - 512 = 3584 tokens rather than the paper's 8192, and rows are 4096 tokens.
Memory: one row's attention scores are 28 heads x 4096^2 x 4 bytes = 1.9 GB; parameters + AdamW
state (7.6B x 16 bytes = 122 GB) are sharded over the whole slice.
"""

from paced_jax import presets as pp

CONTEXT = 4096

SLICES = {
    # 32 chips x 95 GiB: 8 rows per device; 4 micro-batches -> 2 rows at a time: 17.0 GiB
    # peak per device (aot_check), leaving room for the on-policy sampler between steps.
    "v5p-64": pp.Slice(data=1, fsdp=32, tensor=1, micro_batches=4),
    "v5p-128": pp.Slice(data=1, fsdp=64, tensor=1, micro_batches=2),
    # 256 chips x 16 GiB: 1 row per device; state shard 0.5 GB.
    "v5e-256": pp.Slice(data=1, fsdp=256, tensor=1, micro_batches=1),
    # 64 chips x 32 GiB: 4 rows per device; 2 micro-batches -> 2 rows at a time.
    "v6e-64": pp.Slice(data=1, fsdp=64, tensor=1, micro_batches=2),
    "v6e-256": pp.Slice(data=1, fsdp=256, tensor=1, micro_batches=1),
}


def get_config(variant: str = ""):
  c = pp.paper_config(workdir="workdir/qwen25_math_selfdistill", student="/models/Qwen2.5-Math-7B-Instruct",
                      teacher="", track="self_distill", loss="rkl",
                      max_new_tokens=CONTEXT - pp.PROMPT_BUDGET)
  return pp.build(c, variant, SLICES, "configs/qwen25_math_selfdistill.py")
