"""tools/export: a trained checkpoint step as a Hugging Face directory (f32 and bf16) that transformers
loads and greedy-decodes exactly as the project's sampler does; model card; normal permissions."""

import os
import shutil
import stat

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors
import torch
import transformers
from flax import nnx

from paced_jax import artifacts
from paced_jax.sampling.sampler import Sampler, SamplingConfig
from paced_jax.tools import export
from paced_jax.training import trainer
import tiny_workspace
from stage_fixtures import tiny_experiment

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A copy of the session's tiny workspace trained for 2 steps (one checkpoint at step 2)."""
  source, student = tiny_workspace.prepared(tmp_path_factory)
  workdir = str(tmp_path_factory.mktemp("export") / "w")
  shutil.copytree(source, workdir)
  cfg = tiny_experiment(workdir, train__steps=2, train__checkpoint_every=2)
  trainer.train(cfg, student, student, progress=False)
  return cfg, student


def _prompts(student):
  rng = np.random.default_rng(0)
  return [rng.integers(3, student.valid_vocab, size=int(n)).tolist() for n in (3, 7, 11)]


def _hf_greedy(directory, prompts, stop_ids):
  hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
  out = []
  for p in prompts:  # one prompt at a time: no padding in the reference
    with torch.no_grad():
      tokens = hf.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=list(stop_ids), pad_token_id=0)[0, len(p):].tolist()
    stop = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    out.append(tokens if stop is None else tokens[:stop + 1])
  return out


def _ours_logits(student, pure_params, tokens):
  state = jax.tree.map(lambda x: x, student.params)
  nnx.replace_by_pure_dict(state, pure_params)
  decoder = nnx.merge(student.graphdef, state)
  tokens_1T = jnp.asarray([tokens], jnp.int32)
  hidden = decoder(tokens_1T, jnp.arange(len(tokens), dtype=jnp.int32)[None], jnp.ones_like(tokens_1T))
  return np.asarray(decoder.logits(hidden)[0])


def _ours_greedy(student, params, prompts):
  sc = SamplingConfig(greedy=True, max_new_tokens=NEW_TOKENS, num_samples=1, batch_rows=8, chunk_steps=4)
  return [r[0].tokens.tolist() for r in Sampler.for_model(student, params).generate(prompts, sc, progress=False)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_matches_sampler(trained, tmp_path, dtype):
  cfg, student = trained
  artifacts.write_manifest(os.path.join(cfg.workdir, "eval", "final"), "evaluation", tag="final",
                           model_fingerprint="abc@step2",
                           benchmarks={"heldout": {"accuracy": 0.25, "se": 0.05, "k": 8, "n_problems": 16,
                                                   "greedy_pass1": None}}, retain=None)
  out = export.export_checkpoint(cfg, student, 2, dtype, str(tmp_path / "out"))
  _, params = trainer.restore_params(cfg, student, 2)
  if dtype == "bfloat16":  # the sampler decodes the weights as stored: rounded to bf16 (numpy's ml_dtypes)
    params = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    with safetensors.safe_open(os.path.join(out, "model.safetensors"), framework="numpy") as f:
      assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16"}
  prompts = _prompts(student)
  ours = _ours_greedy(student, params, prompts)
  assert ours == _hf_greedy(out, prompts, student.stop_ids)
  # The tiny model's greedy text is one repeated token, so also compare every logit on a prompt.
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = hf(torch.tensor([prompts[2]])).logits[0].numpy()
  np.testing.assert_allclose(_ours_logits(student, params, prompts[2])[:, :theirs.shape[1]], theirs, atol=2e-5, rtol=1e-4)

  assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
  assert {stat.S_IMODE(os.stat(os.path.join(out, f)).st_mode) for f in os.listdir(out)} == {0o644}
  card = open(os.path.join(out, "README.md")).read()
  assert f"step 2, {dtype}" in card and f"Base model (student): `{cfg.student}`" in card
  assert f"divergence `{cfg.train.loss}`" in card and "| final | step2 | heldout | 25.0 ± 5.0 (k=8, n=16) | - |" in card


@pytest.mark.slow
def test_missing_step_names_the_kept_ones(trained):
  cfg, student = trained
  with pytest.raises(FileNotFoundError, match="no checkpoint at step 7; kept steps: 2"):
    export.export_checkpoint(cfg, student, 7, "float32")
