"""Minimal safetensors reading (memory-mapped, tensor by tensor) and writing, bf16 included.

Written by hand rather than through `safetensors.numpy` because that path cannot represent
bfloat16 and because a truncated or corrupted shard must fail with the file and tensor named.
The format is an 8-byte little-endian header length, a JSON header, then raw bytes.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from paced_jax import artifacts

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
  """A checkpoint file is missing, truncated, or holds something other than expected."""


class SafetensorsFile:
  """Lazy view of one .safetensors file; `get(name)` memory-maps only that tensor."""

  def __init__(self, path: str):
    self.path = path
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
          raise CheckpointError(f"{path}: header length {header_len} exceeds the file size {size} (truncated?)")
        header = json.loads(f.read(header_len))
    except FileNotFoundError:
      raise CheckpointError(f"{path}: missing shard") from None
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    header.pop("__metadata__", None)
    self.data_start = 8 + header_len
    self.size = size
    self.header = header

  def names(self) -> list[str]:
    return list(self.header)

  def get(self, name: str) -> np.ndarray:
    info = self.header[name]
    dtype = DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if self.data_start + end > self.size:
      raise CheckpointError(
          f"{self.path}: tensor {name!r} ends at byte {self.data_start + end} but the file has "
          f"{self.size} bytes (truncated shard)")
    if end - begin != dtype.itemsize * int(np.prod(shape)):
      raise CheckpointError(f"{self.path}: tensor {name!r} byte range does not match shape {shape}")
    return np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin, shape=shape)


class CheckpointReader:
  """All tensors of a Hugging Face model directory (single file or index-sharded)."""

  def __init__(self, model_dir: str):
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index_path):
      weight_map = artifacts.read_json(index_path).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: field 'weight_map' is missing or not an object")
      self.location = {name: os.path.join(model_dir, fname) for name, fname in weight_map.items()}
    elif os.path.exists(single):
      self.location = {name: single for name in SafetensorsFile(single).names()}
    else:
      raise CheckpointError(f"{model_dir}: neither model.safetensors nor model.safetensors.index.json found")
    self._files: dict[str, SafetensorsFile] = {}

  def __contains__(self, name: str) -> bool:
    return name in self.location

  def get(self, name: str) -> np.ndarray:
    if name not in self.location:
      raise CheckpointError(f"tensor {name!r} is not in the checkpoint")
    path = self.location[name]
    if path not in self._files:
      self._files[path] = SafetensorsFile(path)
    f = self._files[path]
    if name not in f.header:
      raise CheckpointError(f"{path}: tensor {name!r} listed in the index is not in this shard")
    return f.get(name)


def write_file(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Write tensors atomically in safetensors format (C order, 8-byte aligned header)."""
  header, offset = {}, 0
  for name, arr in tensors.items():
    nbytes = arr.dtype.itemsize * arr.size
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header["__metadata__"] = {"format": "pt"}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with artifacts.atomic_open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in tensors.values():
      f.write(np.ascontiguousarray(arr).tobytes())
