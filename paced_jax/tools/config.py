"""Print the resolved config of a run, or every config field with its default and help text.

  python -m paced_jax.tools.config --config=configs/demo.py:quick --config.train.lr=1e-5
  python -m paced_jax.tools.config --fields            # all fields: dotted name, default, help
"""

from __future__ import annotations

import dataclasses
import io
import json
import tokenize

from absl import flags as absl_flags

from paced_jax import config as config_lib, config_dict
from paced_jax.tools import flags

absl_flags.adopt_module_key_flags(flags)  # --help lists --config too

FIELDS = absl_flags.DEFINE_bool("fields", False, "List every field of the experiment config with its default and help.")


def field_help() -> dict[tuple[str, str], str]:
  """{(dataclass name, field): the comment after its declaration in config.py}: the help text, kept
  next to each setting's one declaration."""
  source = open(config_lib.__file__, encoding="utf-8").read()
  lines = source.splitlines()
  comments = {t.start[0]: t.string.lstrip("# ").strip()
              for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
  out, current = {}, None
  for i, line in enumerate(lines, 1):
    if line.startswith("class "):
      current = line.split()[1].split("(")[0].rstrip(":")
    elif current and line.startswith("  ") and ":" in line and not line.lstrip().startswith(("#", "def", "\"")):
      name = line.split(":")[0].strip()
      if name.isidentifier() and i in comments:
        out[(current, name)] = comments[i]
  return out


def rows(cls=config_lib.ExperimentConfig, prefix: str = "", helps=None):
  helps = field_help() if helps is None else helps
  for f in dataclasses.fields(cls):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(default):
      yield from rows(type(default), f"{prefix}{f.name}.", helps)
    else:
      yield f"{prefix}{f.name}", default, helps.get((cls.__name__, f.name), "")


def main(argv):
  del argv
  if FIELDS.value:
    for name, default, text in rows():
      print(f"{name} = {json.dumps(default, default=str)}" + (f"    # {text}" if text else ""))
    return
  print(json.dumps(config_dict.to_json(flags.resolved_config()), indent=2, default=str))


if __name__ == "__main__":
  flags.run(main)
