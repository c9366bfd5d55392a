"""Export a training checkpoint as a Hugging Face model directory with a model card.

  python -m paced_jax.tools.export --config=configs/tiny.py                       # latest step, float32
  python -m paced_jax.tools.export --config=configs/demo.py --step=50 --dtype=bfloat16 --out=/m/demo-50
  python -m paced_jax.tools.export --config=configs/demo.py --push_to=me/smollm2-paced   # and upload it
Default output: WORKDIR/exports/step<N>-<dtype>/. Loads with transformers' from_pretrained.
"""

from __future__ import annotations

import os

from absl import flags as absl_flags

from paced_jax import mesh as mesh_lib, workspace
from paced_jax.analysis import model_card
from paced_jax.config import ExperimentConfig
from paced_jax.model import hf_checkpoint, loaded as loaded_model
from paced_jax.model.loaded import LoadedModel
from paced_jax.training import checkpoint_select
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

DTYPES = ("float32", "bfloat16")
STEP = absl_flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
DTYPE = absl_flags.DEFINE_enum("dtype", "float32", DTYPES, "Tensor dtype of the exported weights.")
OUT = absl_flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/exports/step<N>-<dtype>).")
PUSH_TO = absl_flags.DEFINE_string("push_to", None, "Also upload the export to this hub model repo (created private "
                                   "if missing; needs a token from `hf auth login`).")


def export_checkpoint(cfg: ExperimentConfig, student: LoadedModel, step: int | None, dtype: str,
                      out_dir: str | None = None) -> str:
  """Restore `step` (None: the latest) of cfg's run and write it with its model card; returns the directory."""
  step, params = checkpoint_select.restore_kept(cfg, student, step)
  out_dir = out_dir or workspace.step_export_dir(cfg.workdir, step, dtype)
  card = model_card.model_card(cfg, step, dtype)
  return hf_checkpoint.export_hf(params, student.cfg, out_dir, tokenizer_dir=student.model_dir, dtype=dtype,
                                 extra_files={"README.md": card})


def main(argv):
  del argv
  cfg = flags.experiment()
  try:
    student = loaded_model.load(cfg.student, mesh_lib.make_mesh(cfg.mesh), cfg.model)
  except loaded_model.ModelNotFoundError as e:  # a hub id not in the cache: one line, no traceback
    flags.fail(f"export: {e}")
  try:
    out = export_checkpoint(cfg, student, STEP.value, DTYPE.value, OUT.value)
  except FileNotFoundError as e:
    flags.fail(f"export: {e}")
  print(f"exported: {out}")
  if PUSH_TO.value:
    push(out, PUSH_TO.value)


def push(directory: str, repo_id: str) -> None:
  import huggingface_hub  # deferred: only uploads need it
  api = huggingface_hub.HfApi()
  try:
    api.create_repo(repo_id, exist_ok=True, private=True)
    info = api.upload_folder(folder_path=directory, repo_id=repo_id,
                             commit_message=f"paced-jax export: {os.path.basename(directory)}")
  except Exception as e:  # noqa: BLE001 (the network layer raises its own types; the command ends here anyway)
    flags.fail(f"export: upload to {repo_id!r} failed ({type(e).__name__}: {e}); the export is in {directory}")
  print(f"uploaded: {info}")


if __name__ == "__main__":
  flags.run(main)
