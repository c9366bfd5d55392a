"""Workspace artifacts: atomic writes, manifests, fingerprints, checksums.

Every stage writes its outputs through these helpers so that a killed run never leaves a
half-written file under a final name, and so that a later stage can refuse inputs that were
produced for another model, tokenizer or setting (DESIGN.md section 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator, Mapping

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
  """An artifact is missing, corrupted, or was produced for something else."""


def fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
  """Open a temporary sibling of `path`; on success fsync and rename it over `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  umask = os.umask(0)
  os.umask(umask)
  os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are shared by pod workers
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
    f.write("\n")


def write_bytes(path: str, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


def read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ArtifactError(f"{path}: missing") from None
  except json.JSONDecodeError as e:
    raise ArtifactError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None


def _json_default(obj: Any) -> Any:
  if hasattr(obj, "tolist"):
    return obj.tolist()
  if hasattr(obj, "__dataclass_fields__"):
    import dataclasses
    return dataclasses.asdict(obj)
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def sha256_file(path: str, chunk_bytes: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(chunk_bytes):
      h.update(chunk)
  return h.hexdigest()


def fingerprint(obj: Any) -> str:
  """Short stable hash of a JSON-serialisable object (configs, settings)."""
  text = json.dumps(obj, sort_keys=True, default=_json_default)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_manifest(directory: str, kind: str, **fields: Any) -> dict:
  manifest = {"schema_version": SCHEMA_VERSION, "kind": kind, **fields}
  write_json(os.path.join(directory, MANIFEST), manifest)
  return manifest


def read_manifest(directory: str, kind: str) -> dict:
  """Read and check `directory/manifest.json` is of `kind` and this schema version."""
  path = os.path.join(directory, MANIFEST)
  manifest = read_json(path)
  if not isinstance(manifest, dict):
    raise ArtifactError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
  if manifest.get("kind") != kind:
    raise ArtifactError(f"{path}: field 'kind' is {manifest.get('kind')!r}, expected {kind!r}")
  if manifest.get("schema_version") != SCHEMA_VERSION:
    raise ArtifactError(
        f"{path}: field 'schema_version' is {manifest.get('schema_version')!r}, "
        f"this paced_jax reads {SCHEMA_VERSION}")
  return manifest


def expect_fields(manifest_path: str, manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
  """Refuse a manifest whose fields differ from what the reading stage expects; name both values."""
  normal = lambda x: json.loads(json.dumps(x, sort_keys=True, default=_json_default))  # tuples == lists
  for key, want in expected.items():
    got = manifest.get(key)
    if normal(got) != normal(want):
      raise ArtifactError(
          f"{manifest_path}: field {key!r} is {got!r} but this run expects {want!r}; "
          "the artifact was produced for another setting (delete it or point to the right one)")
