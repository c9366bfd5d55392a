"""Hugging Face checkpoint import (straight onto a sharded mesh) and export.

One table maps parameter paths to Hugging Face tensor names. Import builds each parameter's
device shards from the tensors one at a time, and each host materialises only the shards its
own devices hold, so a model larger than one host's memory loads on a pod.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Callable

import jax
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx, traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from paced_jax import artifacts, mesh as mesh_lib
from paced_jax.model import decoder as model_lib
from paced_jax.model.config import ModelConfig, load_model_config, to_hf_dict

# (our dotted parameter path, Hugging Face name, transform). Stacked layer parameters map to one
# Hugging Face tensor per layer ({i}). "linear": Hugging Face stores [out, in]; we store
# [in..., out...] with heads as their own axes. "copy": identical; "flat": Hugging Face keeps
# it 1-D, we split the head axes.
NAME_TABLE: tuple[tuple[str, str, str], ...] = (
    (r"embed_tokens", "model.embed_tokens.weight", "copy"),
    (r"lm_head", "lm_head.weight", "linear"),
    (r"norm\.weight", "model.norm.weight", "flat"),
    (r"layers\.(.+)\.kernel", r"model.layers.{i}.\1.weight", "linear"),
    (r"layers\.(.+)\.(weight|bias)", r"model.layers.{i}.\1.\2", "flat"),
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "generation_config.json")


def hf_name(path: str) -> tuple[str, str]:
  """(Hugging Face name template, transform) for one of our dotted parameter paths."""
  for pattern, template, transform in NAME_TABLE:
    m = re.fullmatch(pattern, path)
    if m:
      return m.expand(template), transform
  raise KeyError(f"no conversion rule for parameter {path!r}")


def hf_shape(our_shape: tuple[int, ...], transform: str, fan_in_dims: int) -> tuple[int, ...]:
  """The shape Hugging Face stores for one (per-layer) parameter of `our_shape`."""
  if transform == "linear":
    return (math.prod(our_shape[fan_in_dims:]), math.prod(our_shape[:fan_in_dims]))
  return our_shape if transform == "copy" else (math.prod(our_shape),)


def to_ours(a: np.ndarray, our_shape, transform: str) -> np.ndarray:
  return (a.T if transform == "linear" else a).reshape(our_shape)


def to_hf(x: np.ndarray, shape, transform: str) -> np.ndarray:
  return x.reshape(shape[::-1]).T if transform == "linear" else x.reshape(shape)


def _flat_params(state: nnx.State) -> dict[str, Any]:
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state), sep=".")
  return {k: v for k, v in flat.items() if v is not None}


def _flat_vars(state: nnx.State) -> dict[str, nnx.Variable]:
  return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def _sharded_array(shape, dtype, sharding: NamedSharding, layer_tensors: Callable[[int], np.ndarray] | None,
                   tensor: Callable[[], np.ndarray] | None) -> jax.Array:
  """Assemble a global array from host numpy, reading each source tensor once per host."""
  index_map = sharding.addressable_devices_indices_map(shape)
  buffers: dict[tuple, np.ndarray] = {}
  keys = {d: tuple((s.start, s.stop) for s in idx) for d, idx in index_map.items()}
  if layer_tensors is None:
    full = tensor()
    for d, idx in index_map.items():
      if keys[d] not in buffers:
        buffers[keys[d]] = np.asarray(full[idx], dtype)
  else:
    for d, idx in index_map.items():
      if keys[d] not in buffers:
        buffers[keys[d]] = np.empty([len(range(*s.indices(n))) for s, n in zip(idx, shape)], dtype)
    for layer in range(shape[0]):
      full = layer_tensors(layer)
      for d, idx in index_map.items():
        lo, hi, _ = idx[0].indices(shape[0])
        if lo <= layer < hi:
          buffers[keys[d]][layer - lo] = full[idx[1:]]
  arrays = [jax.device_put(buffers[keys[d]], d) for d in index_map]
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


class CheckpointError(ValueError):
  """A checkpoint file is missing, truncated, or holds something other than expected."""


def _open_failure(path: str, error: Exception) -> CheckpointError:
  """Why safetensors refused a file, naming the first tensor that lies past its end when truncated."""
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:  # the format: 8-byte little-endian header length, JSON header, data
      header_len = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(header_len))
    start = 8 + header_len
    past = [(info["data_offsets"][1], name) for name, info in header.items()
            if name != "__metadata__" and start + info["data_offsets"][1] > size]
  except (ValueError, KeyError, TypeError, OSError):
    past = []
  if past:
    end, name = min(past)
    return CheckpointError(f"{path}: tensor {name!r} ends at byte {start + end} but the file has {size} bytes "
                           "(truncated shard)")
  return CheckpointError(f"{path}: not a safetensors file ({error})")


class CheckpointReader:
  """All tensors of a Hugging Face model directory (single file or index-sharded), read lazily."""

  def __init__(self, model_dir: str):
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    self._files: dict[str, Any] = {}
    if os.path.exists(index_path):
      weight_map = artifacts.read_json(index_path).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: field 'weight_map' is missing or not an object")
      self.location = {name: os.path.join(model_dir, fname) for name, fname in weight_map.items()}
    elif os.path.exists(single):
      self.location = {name: single for name in self._file(single).keys()}
    else:
      raise CheckpointError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json found")

  def _file(self, path: str) -> Any:
    if path not in self._files:
      if not os.path.exists(path):
        raise CheckpointError(f"{path}: missing shard")
      try:
        self._files[path] = safetensors.safe_open(path, framework="numpy")
      except (safetensors.SafetensorError, OSError) as e:
        raise _open_failure(path, e) from None
    return self._files[path]

  def __contains__(self, name: str) -> bool:
    return name in self.location

  def get(self, name: str) -> np.ndarray:
    if name not in self.location:
      raise CheckpointError(f"tensor {name!r} is not in the checkpoint")
    path = self.location[name]
    f = self._file(path)
    if name not in f.keys():
      raise CheckpointError(f"{path}: tensor {name!r} listed in the index is not in this shard")
    try:
      return f.get_tensor(name)
    except (safetensors.SafetensorError, TypeError, ValueError) as e:  # e.g. a dtype numpy lacks
      raise CheckpointError(f"{path}: tensor {name!r}: {e}") from None


def write_file(path: str, tensors: dict[str, np.ndarray]) -> None:
  """One safetensors file (bf16 included) with the metadata transformers expects."""
  safetensors.numpy.save_file({n: np.ascontiguousarray(a) for n, a in tensors.items()}, path, metadata={"format": "pt"})


def load_params(model_dir: str, cfg: ModelConfig, mesh: Mesh, rules=mesh_lib.DEFAULT_RULES) -> nnx.State:
  """Read a Hugging Face checkpoint into the decoder's parameter state, sharded on `mesh`."""
  reader = CheckpointReader(model_dir)
  abstract = nnx.state(model_lib.abstract_decoder(cfg))
  shardings = _flat_params(mesh_lib.state_shardings(abstract, mesh, rules))
  dtype = np.dtype(cfg.param_dtype)
  loaded: dict[str, jax.Array] = {}
  for path, var in _flat_vars(abstract).items():
    template, transform = hf_name(path)
    stacked = path.startswith("layers.")
    one_shape = tuple(var.shape[1:] if stacked else var.shape)
    want = hf_shape(one_shape, transform, var.get_metadata().get("fan_in_dims", 1))

    def read(layer: int | None, template=template, transform=transform, one_shape=one_shape, want=want):
      name = template.format(i=layer)
      if name not in reader:
        if name == "lm_head.weight":
          raise CheckpointError(f"{model_dir}: tensor 'lm_head.weight' missing and tie_word_embeddings is false")
        raise CheckpointError(f"{model_dir}: tensor {name!r} missing from the checkpoint")
      a = reader.get(name)
      if tuple(a.shape) != want:
        raise CheckpointError(f"{reader.location[name]}: tensor {name!r} has shape {tuple(a.shape)}, "
                              f"expected {want} from config.json")
      return to_ours(np.asarray(a, np.float32), one_shape, transform)

    loaded[path] = _sharded_array(
        tuple(var.shape), dtype, shardings[path],
        (lambda i, read=read: read(i)) if stacked else None,
        None if stacked else (lambda read=read: read(None)))
  nnx.replace_by_pure_dict(abstract, traverse_util.unflatten_dict(loaded, sep="."))
  return abstract


def load_model(model_dir: str, mesh: Mesh, rules=mesh_lib.DEFAULT_RULES, **overrides: Any):
  """(config, graphdef, params) for a Hugging Face directory; params sharded on `mesh`."""
  cfg = load_model_config(model_dir, **overrides)
  params = load_params(model_dir, cfg, mesh, rules)
  graphdef = nnx.graphdef(model_lib.abstract_decoder(cfg))
  return cfg, graphdef, params


def export_hf(params: nnx.State, cfg: ModelConfig, out_dir: str, tokenizer_dir: str | None = None,
              dtype: str = "float32", max_shard_bytes: int = 2 << 30, extra_files: dict[str, str] | None = None) -> str:
  """Write a Hugging Face directory (config, safetensors, tokenizer files) atomically.

  `params` is the decoder's nnx.State, or the same as a pure dict (a train state's params);
  `extra_files` maps file names to text (a model card README.md). The directory is 0755 and its
  files 0644, as `save_pretrained` leaves them, whatever the temporary files were created with.
  """
  if not isinstance(params, nnx.State):
    state = nnx.state(model_lib.abstract_decoder(cfg))
    nnx.replace_by_pure_dict(state, params)
    params = state
  np_dtype = np.dtype(dtype) if dtype != "bfloat16" else np.dtype("bfloat16")
  tensors: dict[str, np.ndarray] = {}
  flat = _flat_vars(params)
  for path, var in flat.items():
    template, transform = hf_name(path)
    host = np.asarray(multihost_utils.process_allgather(var[...], tiled=True))
    fan_in = var.get_metadata().get("fan_in_dims", 1)
    if path.startswith("layers."):
      for i in range(host.shape[0]):
        shape = hf_shape(host.shape[1:], transform, fan_in)
        tensors[template.format(i=i)] = to_hf(host[i], shape, transform).astype(np_dtype)
    else:
      tensors[template] = to_hf(host, hf_shape(host.shape, transform, fan_in), transform).astype(np_dtype)
  if jax.process_index() != 0:
    return out_dir
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(out_dir) + ".")
  try:
    _write_shards(tmp, tensors, max_shard_bytes)
    hf_cfg = to_hf_dict(cfg)
    hf_cfg["torch_dtype"] = dtype
    artifacts.write_json(os.path.join(tmp, "config.json"), hf_cfg)
    for fname in TOKENIZER_FILES if tokenizer_dir else ():
      src = os.path.join(tokenizer_dir, fname)
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(tmp, fname))
    for fname, text in (extra_files or {}).items():
      with open(os.path.join(tmp, fname), "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o755)  # mkdtemp and the atomic writers create 0700 / 0600
    for fname in os.listdir(tmp):
      os.chmod(os.path.join(tmp, fname), 0o644)
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def _write_shards(directory: str, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> None:
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():
    if shards[-1] and size + arr.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arr
    size += arr.nbytes
  if len(shards) == 1:
    write_file(os.path.join(directory, "model.safetensors"), shards[0])
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_file(os.path.join(directory, fname), shard)
    weight_map.update({name: fname for name in shard})
  total = sum(a.nbytes for a in tensors.values())
  artifacts.write_json(os.path.join(directory, "model.safetensors.index.json"),
                       {"metadata": {"total_size": total}, "weight_map": weight_map})


def model_fingerprint(model_dir: str) -> str:
  """Cheap identity of a checkpoint: config, tokenizer, and each shard's size, header and ends."""
  parts: dict[str, Any] = {}
  for fname in sorted(os.listdir(model_dir)):
    path = os.path.join(model_dir, fname)
    if fname in ("config.json", "tokenizer.json") or fname.endswith(".safetensors"):
      with open(path, "rb") as f:
        head = f.read(1 << 20)
        f.seek(max(0, os.path.getsize(path) - (1 << 20)))
        tail = f.read()
      parts[fname] = [os.path.getsize(path), artifacts.sha256_bytes(head), artifacts.sha256_bytes(tail)]
  if not parts:
    raise CheckpointError(f"{model_dir}: no config.json or safetensors to fingerprint")
  return artifacts.fingerprint(parts)
