"""The teacher stage: build the teacher signal store from a response file, or verify one.

  python -m paced_jax.tools.teacher build --dir=/tmp/ws/teacher --teacher=/models/qwen3-8b \
      --responses=/tmp/ws/references/responses.jsonl --k=64 --batch_rows=8
  python -m paced_jax.tools.teacher verify --dir=/tmp/ws/teacher

The response file is JSONL: `id`, `response_ids`, and `teacher_prompt_ids` or `teacher_prompt`
(text, tokenized with the teacher's tokenizer as is).
"""

from __future__ import annotations

from absl import app
from absl import flags

from paced_jax.tools import flags as tool_flags

from paced_jax.config import TeacherSignalConfig

_DEFAULT = TeacherSignalConfig()  # the flags' defaults are the config's (config.teacher_signal)
_DIR = flags.DEFINE_string("dir", None, "Teacher store directory (usually WORKDIR/teacher).", required=True)
_TEACHER = flags.DEFINE_string("teacher", None, "build: the teacher's Hugging Face directory.")
_RESPONSES = flags.DEFINE_string("responses", None, "build: the JSONL response file to score.")
_K = flags.DEFINE_integer("k", _DEFAULT.top_k, "build: top-k ids stored per token.")
_LOGPROB_DTYPE = flags.DEFINE_enum("logprob_dtype", _DEFAULT.logprob_dtype, ["float16", "bfloat16"],
                                   "build: stored log-prob dtype.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "build: the teacher's softmax temperature.")
_PROBLEMS_PER_SHARD = flags.DEFINE_integer("problems_per_shard", _DEFAULT.problems_per_shard,
                                           "build: problems per shard file.")
_BATCH_ROWS = flags.DEFINE_integer("batch_rows", _DEFAULT.batch_size, "build: rows per scoring batch (a multiple of data*fsdp).")
_ROW_LENGTH = flags.DEFINE_integer("row_length", None, "build: tokens per row; default per shard, a power of 2.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", _DEFAULT.chunk_size, "build: positions per logits block.")
_COMPUTE_DTYPE = flags.DEFINE_string("compute_dtype", "float32", "build: the teacher's activation dtype.")
_MESH = flags.DEFINE_list("mesh", ["-1", "1", "1"], "build: data,fsdp,tensor mesh sizes (-1 = the rest).")


def _counts(counts: dict) -> str:
  return ", ".join(f"{key} {counts[key]}" for key in ("problems", "tokens", "shards"))


def _build() -> None:
  from paced_jax import mesh as mesh_lib
  from paced_jax.model import hf_checkpoint
  from paced_jax.teacher import build as teacher_build
  from paced_jax.model import tokenization
  if not _TEACHER.value or not _RESPONSES.value:
    raise app.UsageError("build needs --teacher and --responses")
  data, fsdp, tensor = (int(x) for x in _MESH.value)
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=data, fsdp=fsdp, tensor=tensor))
  tokenizer = tokenization.load_tokenizer(_TEACHER.value)
  items = teacher_build.read_items(_RESPONSES.value, tokenizer)
  teacher = hf_checkpoint.load_model(_TEACHER.value, mesh, compute_dtype=_COMPUTE_DTYPE.value)
  signal = TeacherSignalConfig(top_k=_K.value, logprob_dtype=_LOGPROB_DTYPE.value, chunk_size=_CHUNK_SIZE.value,
                               batch_size=_BATCH_ROWS.value, problems_per_shard=_PROBLEMS_PER_SHARD.value)
  cfg = teacher_build.StoreConfig(signal, temperature=_TEMPERATURE.value, row_length=_ROW_LENGTH.value)
  manifest = teacher_build.build_store(
      _DIR.value, items, teacher=teacher, mesh=mesh,
      teacher_fingerprint=hf_checkpoint.model_fingerprint(_TEACHER.value),
      tokenizer_fingerprint=tokenization.tokenizer_fingerprint(tokenizer),
      vocab_size=tokenization.valid_vocab_size(tokenizer), cfg=cfg, pad_id=tokenization.pad_id(tokenizer))
  print(f"{_DIR.value}: " + _counts(manifest["counts"]))


def _verify() -> None:
  from paced_jax.teacher import store as teacher_store
  store = teacher_store.TeacherStore(_DIR.value, verify="none")
  counts = store.verify()
  m = store.manifest
  print(f"{_DIR.value}: ok; k {m['k']}, vocab_size {m['vocab_size']}, logprob_dtype {m['logprob_dtype']}, "
        + _counts(counts))


def main(argv: list[str]) -> None:
  commands = {"build": _build, "verify": _verify}
  if len(argv) != 2 or argv[1] not in commands:
    raise app.UsageError(f"expected one subcommand, {' or '.join(commands)}; got {argv[1:]}")
  try:
    commands[argv[1]]()
  except ValueError as e:  # refused or broken inputs (ArtifactError included): the message says it all
    tool_flags.fail(f"teacher {argv[1]}: {e}")


if __name__ == "__main__":
  tool_flags.run(main, positional=True)
