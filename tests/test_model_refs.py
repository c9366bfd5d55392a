"""Model specs: a hub id is found in a (fake, built here) local Hugging Face cache; a missing one is a clear error."""

import hashlib
import os

import jax
import pytest
import transformers

from paced_jax import mesh as mesh_lib
from paced_jax.model import loaded
from tiny_models import make_tiny_model

SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(root, repo_id: str) -> str:
  """The hub cache layout: models--org--name/{blobs/<hash>, snapshots/<sha>/<file> -> blob, refs/main}."""
  repo = root / ("models--" + repo_id.replace("/", "--"))
  snapshot = repo / "snapshots" / SHA
  (repo / "blobs").mkdir(parents=True)
  snapshot.mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(SHA)
  for name, text in [("config.json", '{"model_type": "qwen3"}'), ("tokenizer.json", "{}")]:
    blob = repo / "blobs" / hashlib.sha256(text.encode()).hexdigest()
    blob.write_text(text)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
  return str(snapshot)


def test_hub_id_resolves_from_local_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may reach the network
  snapshot = _fake_cache(tmp_path / "hub", "Qwen/Qwen3-1.7B")
  for spec in ("Qwen/Qwen3-1.7B", f"Qwen/Qwen3-1.7B@{SHA}"):
    got = loaded.resolve_model_dir(spec)
    assert os.path.samefile(got, snapshot), spec
    with open(os.path.join(got, "config.json")) as f:
      assert f.read() == '{"model_type": "qwen3"}'
  local = tmp_path / "Qwen" / "local"
  local.mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert loaded.resolve_model_dir("Qwen/local") == "Qwen/local"  # a directory wins over a hub id


def test_missing_hub_id_is_one_clear_line(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  (tmp_path / "hub").mkdir()
  with pytest.raises(loaded.ModelNotFoundError) as e:
    loaded.resolve_model_dir("Qwen/Qwen3-1.7B")
  message = str(e.value)
  assert "\n" not in message and "'Qwen/Qwen3-1.7B'" in message and str(tmp_path / "hub") in message
  assert "hf download Qwen/Qwen3-1.7B" in message and "allow_download=True" in message
  with pytest.raises(loaded.ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
    loaded.resolve_model_dir("Qwen/Qwen3-1.7B", allow_download=True)
  with pytest.raises(loaded.ModelNotFoundError, match="model directory '/no/such/dir' does not exist"):
    loaded.resolve_model_dir("/no/such/dir")


def test_hub_id_loads_as_the_student(tmp_path, monkeypatch):
  """A real (tiny) checkpoint stored in the cache layout loads through the same spec a user gives."""
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  snapshot = _fake_cache(tmp_path / "hub", "org/tiny")
  for name in os.listdir(snapshot):
    os.remove(os.path.join(snapshot, name))
  make_tiny_model("qwen3", snapshot)
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  model = loaded.load("org/tiny", mesh)
  reference = transformers.AutoConfig.from_pretrained(snapshot)
  assert os.path.samefile(model.model_dir, snapshot)
  assert (model.cfg.num_layers, model.cfg.vocab_size) == (reference.num_hidden_layers, reference.vocab_size)
