"""Paper preset: Qwen3-8B-GRPO teacher -> Qwen3-1.7B student, forward KL on teacher references.

METHOD.md section 7 (the paper's first headline row). Paths are placeholders; nothing is
downloaded. Point them at local Hugging Face directories / files on every worker:
  --config.student=/models/Qwen3-1.7B          student checkpoint (config.json + safetensors + tokenizer)
  --config.teacher=/models/Qwen3-8B-GRPO       teacher checkpoint (same tokenizer)
  --config.problems.source=/data/train/math_train.jsonl   training problems (problem, answer columns)
  --config.eval.benchmarks=...                 MATH-500 jsonl, AIME 2024 / 2025 parquet under /data
  --config.eval.retain_set=/data/MMLU/mmlu_test.jsonl     MMLU-format forgetting check

  launch/run.sh pipeline --config=configs/qwen3_distill.py                     # one host
  launch/run.sh --tpu=my-pod --zone=us-east5-a pipeline --config=configs/qwen3_distill.py:v5p-64
  python -m paced_jax.tools.aot_check --config=configs/qwen3_distill.py:v5p-64 --topology=v5p-64
Variants (comma-separated): uniform, hard_filter, akl (baselines), two_stage (FKL then on-policy
RKL), and one TPU slice: v5p-64, v5p-128, v5e-256, v6e-64, v6e-256.

Memory: the train step holds 1-2 packed rows of 8704 tokens per device per micro-batch; the
dense attention scores of one row are 16 heads x 8704^2 x 4 bytes = 4.8 GB, so a row costs
~10 GiB of temporaries with remat. Parameters + AdamW state (1.72B x 16 bytes) are sharded over
the whole slice. TPU-compiler numbers from paced_jax.tools.aot_check (launch/README.md):
v5p-64 20.8 GiB peak per device of 95; v5e-256 10.1 GiB of 16.
"""

from paced_jax import presets as pp

SLICES = {
    # 32 chips x 95 GiB: 256 rows = 8 per device; 4 micro-batches -> 2 rows at a time: 20.8 GiB
    # (aot_check). 2 micro-batches (~40 GiB) would halve the FSDP all-gathers if the sampler's
    # KV caches leave the room.
    # Rollouts: 64 decode rows per device from a 40 GiB page pool (374k tokens, 5.8k per row on
    # average; a dense cache for 64 rows at 8704 slots would be 59.5 GiB). With ragged paged
    # attention the decode step's temporaries are 0.60 GiB (aot_check, launch/README.md).
    "v5p-64": pp.Slice(data=1, fsdp=32, tensor=1, micro_batches=4, rollout_rows_per_device=64, rollout_cache_gib=40),
    # 64 chips x 95 GiB: 4 rows per device; 2 micro-batches -> 2 rows at a time.
    "v5p-128": pp.Slice(data=1, fsdp=64, tensor=1, micro_batches=2, rollout_rows_per_device=64, rollout_cache_gib=40),
    # 256 chips x 16 GiB: exactly 1 row per device, no accumulation: 10.1 GiB (aot_check); no room for 2.
    "v5e-256": pp.Slice(data=1, fsdp=256, tensor=1, micro_batches=1),
    # 64 chips x 32 GiB: 4 rows per device; 4 micro-batches -> 1 row (~11 GiB) at a time.
    "v6e-64": pp.Slice(data=1, fsdp=64, tensor=1, micro_batches=4),
    # 256 chips x 32 GiB: 1 row per device.
    "v6e-256": pp.Slice(data=1, fsdp=256, tensor=1, micro_batches=1),
}


def get_config(variant: str = ""):
  c = pp.paper_config(workdir="workdir/qwen3_distill", student="/models/Qwen3-1.7B",
                      teacher="/models/Qwen3-8B-GRPO", track="distill", loss="fkl")
  return pp.build(c, variant, SLICES, "configs/qwen3_distill.py")
