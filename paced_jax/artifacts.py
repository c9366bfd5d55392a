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
import sys
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
  # The pid in the name lets remove_stale_temporaries tell a killed run's leftovers from live files.
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp")
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


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temporaries(directory: str) -> None:
  """Delete atomic_open temporaries in `directory` whose writing process is gone (never a live one's).

  Names without a pid come from versions before the pid was added: no live writer makes them now."""
  for name in os.listdir(directory):
    parts = name.split(".")
    if name.startswith(".") and name.endswith(".tmp"):
      if not (len(parts) >= 4 and parts[-3].isdigit() and _alive(int(parts[-3]))):
        with contextlib.suppress(FileNotFoundError):
          os.unlink(os.path.join(directory, name))


LOCK_FILE = ".lock"
_held: dict[str, int] = {}  # real path of a workdir -> the fd holding its lock (re-entrant within a process)


def lock_workdir(workdir: str) -> None:
  """Hold an advisory lock on `workdir` until this process exits (the OS releases it, even on a kill).

  A second process is refused with the holder's pid and command line. Taking it again in the
  same process is a no-op, so the pipeline and the stages it calls may each take it.
  """
  import fcntl  # deferred: POSIX only
  os.makedirs(workdir, exist_ok=True)
  key = os.path.realpath(workdir)
  if key in _held:
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise ArtifactError(f"{workdir} is in use by another run ({holder}); wait for it or use another workdir") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}".encode(), 0)
  _held[key] = fd


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


def normal_json(x: Any) -> Any:
  """`x` as it reads back from JSON (tuples become lists), for comparing with a manifest."""
  return json.loads(json.dumps(x, sort_keys=True, default=_json_default))


def expect_fields(manifest_path: str, manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
  """Refuse a manifest whose fields differ from what the reading stage expects; name both values."""
  normal = normal_json
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
  from paced_jax import progress  # deferred: only stages need it
  parts_dir = os.path.join(directory, "parts")
  os.makedirs(parts_dir, exist_ok=True)
  settings_path = os.path.join(parts_dir, "settings.json")
  if os.path.exists(settings_path):
    expect_fields(settings_path, read_json(settings_path), settings)
  else:
    write_json(settings_path, settings)
  part_path = lambda c: os.path.join(parts_dir, f"part-{c:05d}.jsonl")
  for c, chunk in enumerate(progress.bar(chunks, desc=desc, unit="chunk")):
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


def read_jsonl_lines(path: str, drop_torn_tail: bool = False) -> list[dict]:
  """Records of a JSON-lines file; `drop_torn_tail` drops (with a warning) a last line a kill cut short."""
  with open(path) as f:
    lines = f.readlines()
  out = []
  for i, line in enumerate(lines):
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      if drop_torn_tail and i == len(lines) - 1:
        import warnings
        warnings.warn(f"{path}: line {i + 1} is cut short (a killed run); dropped", stacklevel=2)
        break
      raise ArtifactError(f"{path}: line {i + 1}: invalid JSON ({e.msg})") from None
  return out
