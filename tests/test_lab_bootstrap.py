"""Lab bootstrap: the PACED train step on a one-hot k = 1 teacher is exactly language-model cross-entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paced_jax import mesh as mesh_lib
from paced_jax.lab import bootstrap as B
from paced_jax.lab import tokenizer as lab_tokenizer
from paced_jax.model import decoder as model_lib
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
