"""Compile a preset's train step and its sampler's decode step ahead of time; print per-device memory.

  python -m paced_jax.tools.aot_check --config=configs/qwen3_distill.py:v5p-64 --topology=v5p-64
  python -m paced_jax.tools.aot_check --config=configs/tiny.py --devices=8
  python -m paced_jax.tools.aot_check --config=configs/qwen3_distill.py:v5p-64 --topology=v5p-64 --platform=cpu

With --topology and the libtpu package installed (launch/aot_env.sh makes a venv with it) the
TPU compiler itself compiles for that slice; no TPU is needed. Otherwise the same program is
compiled for as many fake CPU devices, and the output says it is a CPU compile. Nothing is
allocated and no checkpoint is read: shapes come from the model's config.json or
paced_jax.aot.KNOWN_ARCHITECTURES (--model overrides the preset's student). It runs as one
process whatever the preset's mesh.distributed says: a topology is compiled for, never joined.
The decode step uses the pass-rate sampling settings (--config.pass_rate.sampling.* overrides them).
"""

from __future__ import annotations

import os

from absl import flags as absl_flags

from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

_TOPOLOGY = absl_flags.DEFINE_string("topology", None, "TPU slice to compile for: v5p-64, v5e-256, v6e-64, v4-32, "
                                     "or a libtpu name like v5p:2x4x4.")
_PLATFORM = absl_flags.DEFINE_enum("platform", "auto", ["auto", "tpu", "cpu"],
                                   "auto: the TPU compiler when --topology is given and libtpu is installed, "
                                   "else fake CPU devices.")
_DEVICES = absl_flags.DEFINE_integer("devices", None, "Fake CPU devices (default: the topology's count, else 8).")
_MODEL = absl_flags.DEFINE_string("model", None, "Model shapes instead of the config's student: a config.json "
                                  "(or its directory) or a known architecture name, e.g. Qwen3-1.7B.")
_SEQ_LEN = absl_flags.DEFINE_integer("seq_len", None, "Packed row length (default train.seq_len).")
_BATCH = absl_flags.DEFINE_integer("batch", None, "Packed rows per step (default train.rows_per_step or batch_size).")
_STEPS = absl_flags.DEFINE_multi_enum("steps", ["train", "decode"], ["train", "decode"],
                                     "Which programs to compile: the train step and/or the sampler's decode step.")
_PROMPT_LEN = absl_flags.DEFINE_integer("prompt_len", 512, "Decode step: prompt length (its bucket + max_new_tokens "
                                        "slots per row).")
_WINDOW = absl_flags.DEFINE_integer("window", None, "Decode step with a paged cache read by gathering "
                                    "(paged_attention=gather): slots gathered per row (default: all; shorter "
                                    "rows read fewer). Ragged paged attention reads each row's length.")
_DIVERGENCE = absl_flags.DEFINE_string("divergence", None, "A divergence of training/losses.py's registry to "
                                       "compile (default: the one of the first train step).")


def _prepare_jax(cpu_devices: int) -> None:
  """Before any jax backend starts: CPU only (a TPU target is compiled, never run), N fake devices."""
  import jax
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", cpu_devices)
  # libtpu otherwise asks the GCE metadata server which TPU this VM is; a topology needs none.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # A compile opens no TPU, so the single-process lock (/tmp/libtpu_lockfile) only makes a second
  # concurrent aot_check fail ("Internal error when accessing libtpu multi-process lockfile").
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def main(argv):
  del argv
  cfg = flags.resolved_config()  # one process, no lock: a compile, not a run
  from paced_jax import aot, aot_decode  # after flags: nothing may start a jax backend before _prepare_jax
  try:
    count = _DEVICES.value or (aot.device_count(_TOPOLOGY.value) if _TOPOLOGY.value else 8)
    _prepare_jax(count)
    platform = _PLATFORM.value
    if platform == "auto":
      platform = "tpu" if _TOPOLOGY.value and aot.libtpu_available() else "cpu"
      if _TOPOLOGY.value and platform == "cpu":
        print(f"libtpu is not installed: compiling for {count} fake CPU devices instead of {_TOPOLOGY.value} "
              "(bash launch/aot_env.sh gives a venv that can compile for the real topology)\n")
    if platform == "tpu":
      if not _TOPOLOGY.value:
        raise aot.AOTError("--platform=tpu needs --topology, e.g. --topology=v5p-64")
      target = aot.tpu_target(_TOPOLOGY.value)
    else:
      target = aot.cpu_target(count, _TOPOLOGY.value or "")
    if "train" in _STEPS.value:
      print(aot.format_report(aot.compile_train_step(cfg, target, model=_MODEL.value, rows=_BATCH.value,
                                                     seq_len=_SEQ_LEN.value, divergence=_DIVERGENCE.value)), flush=True)
    if "decode" in _STEPS.value:
      print(aot_decode.format_report(aot_decode.compile_decode_step(cfg, target, model=_MODEL.value,
                                                                    prompt_len=_PROMPT_LEN.value, window=_WINDOW.value)))
  except (aot.AOTError, ValueError) as e:
    flags.fail(f"aot_check: {e}")


if __name__ == "__main__":
  flags.run(main)
