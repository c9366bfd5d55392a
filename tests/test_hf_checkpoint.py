"""Checkpoint import / export: round trip through transformers, and clear errors on bad input."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from paced_jax import mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.model.config import ModelConfigError
from paced_jax.model.hf_checkpoint import CheckpointError
from tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def mesh():
  return mesh_lib.make_mesh(mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2))


def _logits(directory, tokens):
  hf = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
  with torch.no_grad():
    return hf(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("family", ["qwen2", "smollm2"])
def test_export_round_trip(tmp_path, mesh, family):
  src = make_tiny_model(family, str(tmp_path / "src"))
  cfg, graphdef, params = hf_checkpoint.load_model(src, mesh)
  out = hf_checkpoint.export_hf(params, cfg, str(tmp_path / "out"), tokenizer_dir=src, max_shard_bytes=20_000)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))  # sharded on purpose
  tokens = np.random.default_rng(0).integers(3, 96, size=(2, 7))
  np.testing.assert_array_equal(_logits(src, tokens), _logits(out, tokens))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out)
  generated = hf.generate(torch.tensor(tokens[:1]), max_new_tokens=3, do_sample=False)
  assert generated.shape == (1, 10)
  # And back: importing the export gives identical parameters.
  _, _, again = hf_checkpoint.load_model(out, mesh)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_checkpoint_loads(tmp_path, mesh):
  src = make_tiny_model("llama3", str(tmp_path / "src"))
  hf = transformers.AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16)
  hf.save_pretrained(tmp_path / "bf16")
  cfg, graphdef, params = hf_checkpoint.load_model(str(tmp_path / "bf16"), mesh)
  emb = np.asarray(params["embed_tokens"][...])
  np.testing.assert_array_equal(emb, hf.model.embed_tokens.weight.float().detach().numpy())


def test_padded_vocabulary_rows_load(tmp_path, mesh):
  # Qwen-style: the embedding has more rows (128) than the tokenizer has tokens.
  src = make_tiny_model("qwen2", str(tmp_path / "src"), vocab_size=128)
  cfg, _, params = hf_checkpoint.load_model(src, mesh)
  assert cfg.vocab_size == 128 and params["embed_tokens"][...].shape == (128, 32)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_missing_config(tmp_path, mesh):
  with pytest.raises(ModelConfigError, match="no config.json"):
    hf_checkpoint.load_model(str(tmp_path), mesh)


@pytest.mark.parametrize("field,value,match", [
    ("model_type", "mistral", "field 'model_type' is 'mistral'"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}, "'yarn'"),
    ("hidden_act", "gelu", "hidden_act"),
])
def test_unsupported_config(tmp_path, mesh, field, value, match):
  d = make_tiny_model("qwen2", str(tmp_path / "m"))
  path = os.path.join(d, "config.json")
  cfg = json.load(open(path))
  cfg[field] = value
  json.dump(cfg, open(path, "w"))
  with pytest.raises(ModelConfigError, match=match) as err:
    hf_checkpoint.load_model(d, mesh)
  assert "config.json" in str(err.value)


def test_truncated_shard(tmp_path, mesh):
  d = make_tiny_model("qwen2", str(tmp_path / "m"))
  path = os.path.join(d, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 100)
  with pytest.raises(CheckpointError, match="truncated") as err:
    hf_checkpoint.load_model(d, mesh)
  assert "model.safetensors" in str(err.value) and "tensor '" in str(err.value)


def test_missing_shard_and_tensor(tmp_path, mesh):
  d = make_tiny_model("qwen2", str(tmp_path / "m"))
  tensors = safetensors.numpy.load_file(os.path.join(d, "model.safetensors"))
  half = sorted(tensors)[: len(tensors) // 2]
  os.remove(os.path.join(d, "model.safetensors"))
  safetensors.numpy.save_file({n: tensors[n] for n in half}, os.path.join(d, "a.safetensors"))
  json.dump({"weight_map": {n: ("a.safetensors" if n in half else "b.safetensors") for n in tensors}},
            open(os.path.join(d, "model.safetensors.index.json"), "w"))
  with pytest.raises(CheckpointError, match="b.safetensors: missing shard"):
    hf_checkpoint.load_model(d, mesh)
  json.dump({"weight_map": {n: "a.safetensors" for n in half}}, open(os.path.join(d, "model.safetensors.index.json"), "w"))
  with pytest.raises(CheckpointError, match="missing from the checkpoint"):
    hf_checkpoint.load_model(d, mesh)


def test_wrong_shape(tmp_path, mesh):
  d = make_tiny_model("qwen2", str(tmp_path / "m"))
  path = os.path.join(d, "model.safetensors")
  tensors = safetensors.numpy.load_file(path)
  name = "model.layers.1.mlp.up_proj.weight"
  tensors[name] = np.ascontiguousarray(tensors[name][:-1])
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(CheckpointError) as err:
    hf_checkpoint.load_model(d, mesh)
  assert name in str(err.value) and "(47, 32)" in str(err.value) and "(48, 32)" in str(err.value)


def test_name_table_covers_every_parameter():
  for path in ["embed_tokens", "lm_head", "norm.weight", "layers.self_attn.q_proj.kernel",
               "layers.self_attn.q_proj.bias", "layers.self_attn.q_norm.weight", "layers.mlp.down_proj.kernel",
               "layers.input_layernorm.weight"]:
    name, _ = hf_checkpoint.hf_name(path)
    assert name.startswith(("model.", "lm_head"))
  assert hf_checkpoint.hf_name("layers.mlp.up_proj.kernel") == ("model.layers.{i}.mlp.up_proj.weight", "linear")
