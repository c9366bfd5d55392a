"""Teacher stage: score every reference under the teacher's prompt -> WORKDIR/teacher/ (top-k store)."""

from __future__ import annotations


from paced_jax import workspace
from paced_jax.problems import prompts as prompts_lib
from paced_jax.teacher import reference
from paced_jax.teacher import build as teacher_build
from paced_jax.config import ExperimentConfig
from paced_jax.model.loaded import LoadedModel
from paced_jax.problems.prepare import read_problems
from paced_jax.teacher.store import TeacherStore


def store_config(cfg: ExperimentConfig) -> teacher_build.StoreConfig:
  return teacher_build.StoreConfig(cfg.teacher_signal, temperature=cfg.train.temperature)


def check_same_tokenizer(student: LoadedModel, teacher: LoadedModel) -> None:
  """Distillation pairs distributions token by token: the vocabularies must be identical."""
  if student.tokenizer_fingerprint != teacher.tokenizer_fingerprint:
    raise ValueError(f"teacher and student tokenizers differ: student {student.model_dir} has fingerprint "
                     f"{student.tokenizer_fingerprint}, teacher {teacher.model_dir} has {teacher.tokenizer_fingerprint}")


def expect(teacher: LoadedModel, cfg: ExperimentConfig) -> dict:
  return {"teacher_fingerprint": teacher.fingerprint, "tokenizer_fingerprint": teacher.tokenizer_fingerprint,
          "k": cfg.teacher_signal.top_k, "vocab_size": teacher.valid_vocab}


def run(cfg: ExperimentConfig, teacher: LoadedModel) -> str:
  """Build (or resume, or reuse) the store for the usable references of the training problems."""
  refs = reference.usable(cfg, reference.read(cfg.workdir))
  items = [teacher_build.TeacherItem(p.id, prompts_lib.teacher_prompt(teacher.tokenizer, p, cfg.prompts),
                                     refs[p.id]["response_ids"])
           for p in read_problems(cfg.workdir, "train") if p.id in refs]
  out = workspace.teacher_dir(cfg.workdir)
  teacher_build.build_store(out, items, teacher=(teacher.cfg, teacher.graphdef, teacher.params), mesh=teacher.mesh,
                            teacher_fingerprint=teacher.fingerprint,
                            tokenizer_fingerprint=teacher.tokenizer_fingerprint, vocab_size=teacher.valid_vocab,
                            cfg=store_config(cfg))
  return out


def open_store(cfg: ExperimentConfig, teacher: LoadedModel) -> TeacherStore:
  return TeacherStore(workspace.teacher_dir(cfg.workdir), expect=expect(teacher, cfg))
