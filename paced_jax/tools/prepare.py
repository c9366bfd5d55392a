"""Prepare WORKDIR/problems/ from a problem file, a glob of shards, a datasets directory or a built-in generator.

  python -m paced_jax.tools.prepare --workdir=/tmp/ws --source=builtin:easy_arithmetic \
      --n_train=512 --n_heldout=128
  python -m paced_jax.tools.prepare --workdir=/tmp/ws --source=aime24.parquet --n_heldout=0 \
      --field_id=ID --field_prompt=Problem --field_answer=Answer --field_solution=Solution
  python -m paced_jax.tools.prepare --workdir=/tmp/ws --source='/data/dapo/train-*.parquet' \
      --fields=dapo --n_train=4096 --n_heldout=256
"""

from __future__ import annotations

import dataclasses
import os

from absl import app
from absl import flags

from paced_jax import artifacts, workspace
from paced_jax.config import ProblemsConfig
from paced_jax.problems import builtin
from paced_jax.problems import prepare as prepare_lib
from paced_jax.problems import records
from paced_jax.tools import flags as tool_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Workspace directory.", required=True)
_SOURCE = flags.DEFINE_string(
    "source", None,
    f"builtin:<name> ({', '.join(sorted(builtin.BUILTIN_SOURCES))}), a .jsonl / .json / .parquet file, "
    "a glob of them (quoted), or a directory written by datasets' save_to_disk.",
    required=True)
_N_TRAIN = flags.DEFINE_integer("n_train", None, "Training problems (a file: default all not held out).")
_DEFAULT = ProblemsConfig()  # the flags' defaults are the config's (config.problems)
_N_HELDOUT = flags.DEFINE_integer("n_heldout", 0, "Held-out problems.")
_SEED = flags.DEFINE_integer("seed", _DEFAULT.seed, "Generator seed (a file: the shuffle that picks the held-out rows).")
_FIELDS = flags.DEFINE_enum("fields", None, list(records.FIELD_PRESETS),
                            "A published layout's columns (records.FIELD_PRESETS); --field_* flags given override it.")
_FIELD_ID = flags.DEFINE_string("field_id", _DEFAULT.field_id, "File column of the problem id; '' = number the rows.")
_FIELD_PROMPT = flags.DEFINE_string("field_prompt", _DEFAULT.field_prompt, "File column of the problem text.")
_FIELD_ANSWER = flags.DEFINE_string("field_answer", _DEFAULT.field_answer, "File column of the ground-truth answer.")
_FIELD_SOLUTION = flags.DEFINE_string("field_solution", _DEFAULT.field_solution,
                                      "File column of a worked solution; '' = none.")
_FIELD_LEVEL = flags.DEFINE_string("field_level", "level", "File column of a difficulty level; '' = none.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fields = records.FieldMap(
      id=_FIELD_ID.value or None, prompt=_FIELD_PROMPT.value, answer=_FIELD_ANSWER.value,
      solution=_FIELD_SOLUTION.value or None, level=_FIELD_LEVEL.value or None)
  if _FIELDS.value is not None:  # the preset, with only the --field_* flags the user gave on top
    given = {f.name.removeprefix("field_"): f.value or None
             for f in (_FIELD_ID, _FIELD_PROMPT, _FIELD_ANSWER, _FIELD_SOLUTION, _FIELD_LEVEL) if f.present}
    fields = dataclasses.replace(records.FIELD_PRESETS[_FIELDS.value], **given)
  existed = os.path.exists(os.path.join(workspace.problems_dir(_WORKDIR.value), artifacts.MANIFEST))
  try:
    directory = prepare_lib.prepare(_WORKDIR.value, _SOURCE.value, n_train=_N_TRAIN.value,
                                 n_heldout=_N_HELDOUT.value, seed=_SEED.value, fields=fields)
  except ValueError as e:  # bad files and refused workspaces: the message says it all
    tool_flags.fail(f"prepare: {e}")
  counts = artifacts.read_manifest(directory, prepare_lib.KIND)["counts"]
  print(f"{directory} ({'reused' if existed else 'written'}): "
        + ", ".join(f"{split} {counts[split]}" for split in records.SPLITS))


if __name__ == "__main__":
  tool_flags.run(main)
