"""Lab bootstrap: the PACED train step on a one-hot k = 1 teacher is exactly language-model cross-entropy."""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paced_jax import mesh as mesh_lib
from paced_jax.lab import bootstrap as B
from paced_jax.lab import tokenizer as lab_tokenizer
from paced_jax.model import decoder as model_lib
from paced_jax.problems import lab_arithmetic as lab_tasks
from paced_jax.training import train_step as ts
from paced_jax.config import PromptConfig
from paced_jax.mesh import MeshConfig
from paced_jax.training.packing import pack

PROMPTS = PromptConfig(teacher_context="solution", solution_template="{problem}\nSolution:\n{solution}")
SPEC = B.ModelSpec(hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1, steps=3)
CFG = B.BootstrapConfig(batch_size=8, seq_len=128, hint_fraction=0.5)


def test_one_hot_step_loss_is_cross_entropy():
  tok = lab_tokenizer.build()
  model_cfg = B.model_config(SPEC, tok)
  graphdef, state = nnx.split(model_lib.init_decoder(model_cfg, 0))
  params = nnx.to_pure_dict(state)
  examples = B.Corpus(tok, PROMPTS, CFG).examples(0)
  batch, dropped = pack(examples, 8, CFG.seq_len, 1)
  assert dropped == 0
  scfg = B.step_config(graphdef, SPEC, CFG, len(tok))
  mesh = mesh_lib.make_mesh(MeshConfig(), jax.devices()[:1])
  with jax.set_mesh(mesh):
    loss, _ = jax.jit(lambda p, b: ts.loss_and_metrics(p, b, None, scfg))(params, batch)
  # Brute force: full softmax over the real tokens, -log p(next token), mean over response tokens.
  model = nnx.merge(graphdef, params)
  hidden = model(jnp.asarray(batch.tokens), jnp.asarray(batch.positions), jnp.asarray(batch.segment_ids))
  logits = np.asarray(model.logits(hidden), np.float64)[..., :len(tok)]
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  total, count = 0.0, 0
  for b in range(batch.tokens.shape[0]):
    for t in range(batch.tokens.shape[1] - 1):
      if batch.loss_mask[b, t] > 0:
        assert batch.tokens[b, t + 1] == batch.teacher_ids[b, t, 0]  # the one-hot target is the next token
        total -= logp[b, t, batch.tokens[b, t + 1]]
        count += 1
  assert count == sum(len(e.tokens) - e.prompt_len for e in examples)
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-4)


def test_corpus_is_deterministic_train_only_and_hints_some():
  tok = lab_tokenizer.build()
  corpus = B.Corpus(tok, PROMPTS, CFG)
  a, b = corpus.examples(3), corpus.examples(3)
  assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b))
  assert not all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, corpus.examples(4)))
  solution_id = tok.convert_tokens_to_ids("Solution")
  hinted = [int(solution_id in e.tokens[:e.prompt_len]) for s in range(6) for e in corpus.examples(s)]
  assert 0.25 < np.mean(hinted) < 0.75   # hint_fraction 0.5
  for e in a:  # responses end with the end-of-turn token, so a trained model stops
    assert e.tokens[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_trained_model_is_cached_and_refuses_other_settings(tmp_path):
  mesh = mesh_lib.make_mesh(MeshConfig(), jax.devices()[:1])
  out = B.ensure_model(str(tmp_path), "student", SPEC, CFG, PROMPTS, mesh, seed=1)
  losses = [line for line in open(tmp_path / "student.train.jsonl")]
  assert len(losses) >= 1
  from paced_jax import artifacts
  from paced_jax.model import loaded as loaded_model
  stamp = (tmp_path / "student" / "model.safetensors").stat().st_mtime
  assert B.ensure_model(str(tmp_path), "student", SPEC, CFG, PROMPTS, mesh, seed=1) == out
  assert (tmp_path / "student" / "model.safetensors").stat().st_mtime == stamp
  try:
    B.ensure_model(str(tmp_path), "student", SPEC, CFG, PROMPTS, mesh, seed=2)
  except artifacts.ArtifactError as e:
    assert "seed" in str(e)
  else:
    raise AssertionError("a model made with another seed was reused")
  loaded = loaded_model.load(out, mesh)
  assert loaded.cfg.hidden_size == SPEC.hidden and loaded.valid_vocab == len(lab_tokenizer.build())


# The style gap: hand-written solutions of one problem per level shape, in both formats.
HAND = {
    "47+8": ("47+8=55\nAnswer: 55", "+8=55\nAnswer: 55"),
    "47+8-5+3-9": ("47+8=55\n55-5=50\n50+3=53\n53-9=44\nAnswer: 44", "+8=55\n-5=50\n+3=53\n-9=44\nAnswer: 44"),
    "7*8+23": ("7*8=56\n56+23=79\nAnswer: 79", "*8=56\n+23=79\nAnswer: 79"),
    "37*6+15": ("30*6=180\n7*6=42\n180+42=222\n222+15=237\nAnswer: 237", "*6=222\n+15=237\nAnswer: 237"),
}


def test_student_format_differs_from_teacher_and_both_grade_exactly():
  from paced_jax.evaluation import verifier
  exact = verifier.VerifierConfig(extract=("answer_line",), math_verify=False)
  cfg = B.BootstrapConfig()
  teacher, student = lab_tasks.FORMATS[cfg.teacher_format], lab_tasks.FORMATS[cfg.student_format]
  for expr, (worked, terse) in HAND.items():
    assert teacher(expr) == worked and student(expr) == terse
    answer = worked.rsplit(" ", 1)[1]
    for text in (worked, terse):
      assert verifier.grade(text, answer, exact).correct
      assert not verifier.grade(text, str(int(answer) + 1), exact).correct
  for p in lab_tasks.generate(60, seed=0, split="train"):   # every level: the formats differ
    expr = p.prompt.removeprefix("Compute ").removesuffix(".")
    assert p.solution == teacher(expr) != student(expr)
    assert verifier.grade(student(expr), p.answer, exact).correct


class _Scripted:
  """A random.Random stand-in that returns the given values, to pin one off-path example."""

  def __init__(self, random, index, delta=None):
    self._random, self._index, self._delta = random, index, delta

  def random(self):
    return self._random

  def randint(self, a, b):
    assert a <= self._index <= b
    return self._index

  def randrange(self, n):
    assert self._index < n
    return self._index

  def choice(self, options):
    assert self._delta in options
    return self._delta


def test_off_path_prefixes_by_hand():
  # Terse branch: the student's running value after the product, then the worked rest.
  assert B.off_path("37*6+15", _Scripted(0.2, 1)) == ("*6=222\n", "222+15=237\nAnswer: 237")
  assert B.off_path("37*6+15", _Scripted(0.2, 2)) == ("*6=222\n+15=237\n", "Answer: 237")
  # Error branch: worked lines up to a wrong one (7*6=44), then the worked lines after it, from the right 222.
  assert B.off_path("37*6+15", _Scripted(0.7, 1, 2)) == ("30*6=180\n7*6=44\n", "180+42=222\n222+15=237\nAnswer: 237")
  assert B.off_path("47+8", _Scripted(0.7, 0, -10)) == ("47+8=45\n", "Answer: 55")


def test_context_examples_train_only_the_way_back():
  tok = lab_tokenizer.build()
  cfg = B.BootstrapConfig(batch_size=48, hint_fraction=1.0, off_path_fraction=0.5)
  eos = tok.convert_tokens_to_ids("<|im_end|>")
  kinds = {"on": 0, "terse": 0, "error": 0}
  for e in B.Corpus(tok, PROMPTS, cfg).examples(0):
    prompt = tok.decode(e.tokens[:e.prompt_len])
    target = tok.decode(e.tokens[e.prompt_len:-1])
    assert e.tokens[-1] == eos
    m = re.search(r"Compute (\S+)\.\nSolution:\n(.*?)<\|im_end\|>\n<\|im_start\|>assistant\n(.*)$", prompt, re.S)
    assert m, prompt
    expr, context, prefix = m.groups()
    assert context == lab_tasks.solution(expr)            # the privileged context is the worked solution
    worked = context.split("\n")
    if not prefix:
      kinds["on"] += 1
      assert target == context
      continue
    # Off the path: the target is the tail of the worked solution, ending in the right answer.
    assert target.endswith(f"Answer: {lab_tasks.answer_of(expr)}") and context.endswith(target)
    lines = prefix.rstrip("\n").split("\n")
    if lines[-1][0].isdigit():
      kinds["error"] += 1
      lhs, rhs = lines[-1].split("=")
      assert int(rhs) != int(eval(lhs, {"__builtins__": {}}))    # digits and + - * only
      assert lines[:-1] == worked[:len(lines) - 1]
      assert target.split("\n")[:-1] == worked[len(lines):-1]   # resumes after the wrong line
    else:
      kinds["terse"] += 1
      assert lab_tasks.terse_solution(expr).startswith(prefix)
  assert min(kinds.values()) >= 5, kinds


def test_teacher_learns_only_its_format_and_student_mostly_its_own():
  tok = lab_tokenizer.build()
  cfg = B.BootstrapConfig(batch_size=32, hint_fraction=0.3)
  for role, fmt in (("teacher", cfg.teacher_format), ("student", cfg.student_format)):
    plain = 0
    for e in B.Corpus(tok, PROMPTS, cfg, role).examples(1):
      prompt = tok.decode(e.tokens[:e.prompt_len])
      if "Solution" in prompt:
        assert role == "student"
        continue
      plain += 1
      expr = re.search(r"Compute (\S+)\.", prompt).group(1)
      assert tok.decode(e.tokens[e.prompt_len:-1]) == lab_tasks.FORMATS[fmt](expr)
    assert plain == 32 if role == "teacher" else 10 < plain < 32


def test_manifest_refuses_other_formats_and_off_path_settings(tmp_path):
  from paced_jax import artifacts
  mesh = mesh_lib.make_mesh(MeshConfig(), jax.devices()[:1])
  tiny = B.ModelSpec(hidden=16, intermediate=32, layers=1, heads=2, kv_heads=1, steps=1)
  B.ensure_model(str(tmp_path), "student", tiny, CFG, PROMPTS, mesh, seed=1)
  for change in ({"student_format": "worked"}, {"off_path_fraction": 0.25}, {"hint_fraction": 0.3}):
    with pytest.raises(artifacts.ArtifactError, match="bootstrap"):
      B.ensure_model(str(tmp_path), "student", tiny, dataclasses.replace(CFG, **change), PROMPTS, mesh, seed=1)
  # The teacher's corpus does not depend on the student-only settings: its model stays valid.
  teacher = B.ensure_model(str(tmp_path), "teacher", tiny, CFG, PROMPTS, mesh, seed=0)
  stamp = os.path.getmtime(os.path.join(teacher, "model.safetensors"))
  B.ensure_model(str(tmp_path), "teacher", tiny, dataclasses.replace(CFG, student_format="worked"), PROMPTS, mesh, seed=0)
  assert os.path.getmtime(os.path.join(teacher, "model.safetensors")) == stamp
  with pytest.raises(artifacts.ArtifactError, match="bootstrap"):
    B.ensure_model(str(tmp_path), "teacher", tiny, dataclasses.replace(CFG, teacher_format="terse"), PROMPTS, mesh, seed=0)


@pytest.mark.parametrize("field,value", [("student_format", "prose"), ("hint_fraction", 1.5), ("off_path_fraction", -0.1)])
def test_bad_bootstrap_settings_are_refused(field, value):
  with pytest.raises(ValueError, match=field):
    B.BootstrapConfig(**{field: value})
