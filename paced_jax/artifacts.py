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
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

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


def write_jsonl_in_parts(directory: str, filename: str, chunks: Sequence[Any],
                         compute: Callable[[Any], list[dict]], settings: Mapping[str, Any],
                         desc: str = "") -> str:
  """Write `directory/filename` (JSON lines) chunk by chunk, resuming a killed run.

  Each finished chunk lands atomically in `parts/`; a rerun skips finished parts, but only if
  they were made with the same `settings`. The merged file is byte-identical to an uninterrupted
  run's when `compute` is deterministic. `parts/` is removed once the file is complete.
  """
  from tqdm.auto import tqdm  # deferred: only stages need it
  parts_dir = os.path.join(directory, "parts")
  os.makedirs(parts_dir, exist_ok=True)
  settings_path = os.path.join(parts_dir, "settings.json")
  if os.path.exists(settings_path):
    expect_fields(settings_path, read_json(settings_path), settings)
  else:
    write_json(settings_path, settings)
  part_path = lambda c: os.path.join(parts_dir, f"part-{c:05d}.jsonl")
  for c, chunk in enumerate(tqdm(chunks, desc=desc, unit="chunk")):
    if os.path.exists(part_path(c)):
      continue
    records = compute(chunk)
    with atomic_open(part_path(c)) as f:
      for r in records:
        f.write(json.dumps(r, sort_keys=True) + "\n")
  path = os.path.join(directory, filename)
  with atomic_open(path) as out:
    for c in range(len(chunks)):
      with open(part_path(c)) as f:
        out.write(f.read())
  shutil.rmtree(parts_dir)
  return path


def read_jsonl_checked(directory: str, filename: str, kind: str) -> list[dict]:
  """Records of a finished artifact, after checking its manifest kind and checksum."""
  path = os.path.join(directory, filename)
  manifest = read_manifest(directory, kind)
  if sha256_file(path) != manifest["checksums"][filename]:
    raise ArtifactError(f"{path}: checksum does not match {directory}/{MANIFEST} (modified or corrupted)")
  return read_jsonl_lines(path)


def read_jsonl_lines(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]
