"""Paper preset: Llama-3.3-70B-Instruct teacher -> Llama-3.1-8B-Instruct student, forward KL.

Same recipe as configs/qwen3_distill.py on the Llama 3 family (shared tokenizer, 128256 rows).
Paths are placeholders; nothing is downloaded:
  --config.student=/models/Llama-3.1-8B-Instruct
  --config.teacher=/models/Llama-3.3-70B-Instruct
  --config.problems.source=/data/train/math_train.jsonl
  --config.eval.benchmarks=... / --config.eval.retain_set=...   (files under /data)

  launch/run.sh --tpu=my-pod --zone=us-east5-a pipeline --config=configs/llama3_distill.py:v5p-128
Variants (comma-separated): uniform, hard_filter, akl, two_stage, and one TPU slice: v5p-64,
v5p-128, v5p-256, v5e-256, v6e-64, v6e-256.

Mesh: the 70B teacher generates references and scores them on the same mesh as training, so the
slices use tensor parallelism (4-8 ways: heads, MLP and vocabulary split, weights stay put while
decoding) with FSDP over the rest. Its weights are 70.6B x 4 bytes (f32 params) = 282 GB, e.g.
8.8 GB per chip on a v5p-64. The student's train step: one row's attention scores are
32 heads x 8704^2 x 4 bytes = 9.7 GB, split over the tensor axis.
"""

from paced_jax import presets as pp

SLICES = {
    # 32 chips x 95 GiB: batch over 8 fsdp groups of 4 chips; 256 rows = 32 per group,
    # 16 micro-batches -> 2 rows per group at a time: 24.4 GiB + 9.2 GiB of resident student
    # and teacher weights per chip (aot_check).
    "v5p-64": pp.Slice(data=1, fsdp=8, tensor=4, micro_batches=16),
    "v5p-128": pp.Slice(data=1, fsdp=16, tensor=4, micro_batches=8),
    "v5p-256": pp.Slice(data=1, fsdp=32, tensor=4, micro_batches=4),
    # 256 chips x 16 GiB: tensor 8 keeps the 70B teacher at 1.1 GB per chip and a row's attention
    # at 4 heads per chip; 32 groups, 8 rows each, 8 micro-batches -> 1 row per group:
    # 7.5 GiB + 1.2 GiB resident of 16 (aot_check).
    "v5e-256": pp.Slice(data=1, fsdp=32, tensor=8, micro_batches=8),
    # 64 chips x 32 GiB: 16 groups of 4, 16 rows each; 8 micro-batches -> 2 rows per group.
    "v6e-64": pp.Slice(data=1, fsdp=16, tensor=4, micro_batches=8),
    "v6e-256": pp.Slice(data=1, fsdp=64, tensor=4, micro_batches=4),
}


def get_config(variant: str = ""):
  c = pp.paper_config(workdir="workdir/llama3_distill", student="/models/Llama-3.1-8B-Instruct",
                      teacher="/models/Llama-3.3-70B-Instruct", track="distill", loss="fkl")
  return pp.build(c, variant, SLICES, "configs/llama3_distill.py")
