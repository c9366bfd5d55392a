"""The teacher signal store WORKDIR/teacher/: flat shards, an offsets index, a manifest.

Layout (DESIGN.md section 6):
  shard-00000.bin   problems [s*P, (s+1)*P) of the ordered input list (P = problems_per_shard),
                    one record per problem, back to back; a record of n response tokens is
                    ids int32 [n, k] | logprobs [n, k] (bfloat16 or float16) | tail f32 [n] |
                    target_logprob f32 [n], little-endian, no header, no padding.
  index.jsonl       one line per problem, in input order: id, shard, byte offset, n, and the
                    sha256 (16 hex) of the response ids the signal was computed on.
  manifest.json     written last (its presence marks the store complete): fingerprints, k,
                    vocab size, dtype, counts, the sha256 and size of every shard and the index.
Row j of a record is the teacher's prediction of response token j (see teacher_scoring).
teacher_build writes it; this module holds the format and the reader.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import ml_dtypes
import numpy as np

from paced_jax import artifacts
from paced_jax.artifacts import ArtifactError

KIND = "teacher_signal"
INDEX = "index.jsonl"
LOGPROB_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype("<f2")}
# What a reader may insist on (TeacherStore's `expect`); teacher_build checks more.
EXPECT_KEYS = ("teacher_fingerprint", "tokenizer_fingerprint", "k", "vocab_size")


def record_bytes(n: int, k: int, logprob_dtype: str) -> int:
  return n * k * (4 + LOGPROB_DTYPES[logprob_dtype].itemsize) + 8 * n


def encode_record(signal: Mapping[str, np.ndarray], logprob_dtype: str) -> bytes:
  logprobs = np.asarray(signal["logprobs"], np.float32).astype(LOGPROB_DTYPES[logprob_dtype])
  parts = (np.asarray(signal["ids"], "<i4"), logprobs, np.asarray(signal["tail"], "<f4"),
           np.asarray(signal["target_logprob"], "<f4"))
  return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)


def decode_record(buf: bytes, n: int, k: int, logprob_dtype: str) -> dict[str, np.ndarray]:
  lp = LOGPROB_DTYPES[logprob_dtype]
  sizes = (("ids", np.dtype("<i4"), (n, k)), ("logprobs", lp, (n, k)), ("tail", np.dtype("<f4"), (n,)),
           ("target_logprob", np.dtype("<f4"), (n,)))
  out, at = {}, 0
  for name, dtype, shape in sizes:
    count = int(np.prod(shape))
    out[name] = np.frombuffer(buf, dtype, count, at).reshape(shape).copy()
    at += count * dtype.itemsize
  return out


def response_checksum(response_ids: Sequence[int]) -> str:
  return hashlib.sha256(np.asarray(response_ids, "<i4").tobytes()).hexdigest()[:16]


def shard_name(s: int) -> str:
  return f"shard-{s:05d}.bin"


# ---------------------------------------------------------------------------------------------
# Reader.


class TeacherStore:
  """Random access by problem id to a finished store, after checking it is the expected one.

  `expect` (keys from EXPECT_KEYS) refuses a store made for another teacher, tokenizer, k or
  vocabulary, naming both values. Opening checks the index checksum and every shard's size
  (catching truncation); `verify="lazy"` checks a shard's sha256 the first time a process reads
  it, "open" all of them now, "none" never (then call `verify()` yourself).
  """

  def __init__(self, directory: str, expect: Mapping[str, Any] | None = None, verify: str = "lazy"):
    if verify not in ("lazy", "open", "none"):
      raise ValueError(f"verify={verify!r}: expected 'lazy', 'open' or 'none'")
    self.directory = directory
    path = os.path.join(directory, artifacts.MANIFEST)
    if not os.path.exists(path):
      raise ArtifactError(f"{path}: missing; the teacher store in {directory} is absent or its build did not "
                          "finish (rerun `teacher build`)")
    self.manifest = m = artifacts.read_manifest(directory, KIND)
    missing = [key for key in (*EXPECT_KEYS, "logprob_dtype", "shards", "index", "counts") if key not in m]
    if missing:
      raise ArtifactError(f"{path}: fields {missing} missing; not a teacher store manifest of this version")
    if expect:
      artifacts.expect_fields(path, m, expect)
    if m["logprob_dtype"] not in LOGPROB_DTYPES:
      raise ArtifactError(f"{path}: field 'logprob_dtype' is {m['logprob_dtype']!r}, "
                          f"expected one of {sorted(LOGPROB_DTYPES)}")
    self.k, self.logprob_dtype = int(m["k"]), m["logprob_dtype"]
    self._lazy = verify == "lazy"
    self._verified: set[int] = set()
    for s, shard in enumerate(m["shards"]):
      spath = os.path.join(directory, shard["file"])
      size = os.path.getsize(spath) if os.path.exists(spath) else None
      if size != shard["bytes"]:
        raise ArtifactError(f"{spath}: {'missing' if size is None else f'{size} bytes'} but the manifest says "
                            f"{shard['bytes']} bytes; the shard is truncated or was replaced")
    self._entries = self._read_index()
    self.ids = list(self._entries)
    if verify == "open":
      for s in range(len(m["shards"])):
        self._verify_shard(s)

  def _read_index(self) -> dict[str, tuple[int, int, int, str]]:
    want = self.manifest["index"]
    path = os.path.join(self.directory, want["file"])
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      raise ArtifactError(f"{path}: missing; the teacher store is incomplete") from None
    lines = data.split(b"\n")
    complete = len(lines) - 1  # every entry ends with a newline; a cut one does not count
    if complete != want["entries"] or lines[-1]:
      raise ArtifactError(f"{path}: {complete} complete entries{' and a cut-off line' if lines[-1] else ''}, "
                          f"but the manifest says {want['entries']}; the index is truncated or was changed")
    got = artifacts.sha256_bytes(data)
    if got != want["sha256"]:
      raise ArtifactError(f"{path}: sha256 is {got} but the manifest says {want['sha256']}; the index was changed")
    entries = {}
    for line in lines[:-1]:
      e = json.loads(line)
      entries[e["id"]] = (e["shard"], e["offset"], e["length"], e["response_sha256"])
    return entries

  def _verify_shard(self, s: int) -> None:
    shard = self.manifest["shards"][s]
    path = os.path.join(self.directory, shard["file"])
    got = artifacts.sha256_file(path)
    if got != shard["sha256"]:
      raise ArtifactError(f"{path}: sha256 is {got} but the manifest says {shard['sha256']}; the shard is "
                          "corrupted or was changed (rebuild the store)")
    self._verified.add(s)

  def __len__(self) -> int:
    return len(self.ids)

  def __contains__(self, problem_id: str) -> bool:
    return problem_id in self._entries

  def response_sha256(self, problem_id: str) -> str:
    return self._entry(problem_id)[3]

  def _entry(self, problem_id: str):
    try:
      return self._entries[problem_id]
    except KeyError:
      raise KeyError(f"problem {problem_id!r} is not in the teacher store {self.directory}") from None

  def __getitem__(self, problem_id: str) -> dict[str, np.ndarray]:
    """ids int32 [n, k], logprobs (stored dtype) [n, k], tail f32 [n], target_logprob f32 [n]."""
    s, offset, n, _ = self._entry(problem_id)
    if self._lazy and s not in self._verified:
      self._verify_shard(s)
    size = record_bytes(n, self.k, self.logprob_dtype)
    with open(os.path.join(self.directory, self.manifest["shards"][s]["file"]), "rb") as f:
      buf = os.pread(f.fileno(), size, offset)
    if len(buf) != size:
      raise ArtifactError(f"{self.directory}: problem {problem_id!r} reads {len(buf)} of {size} bytes; shard truncated")
    return decode_record(buf, n, self.k, self.logprob_dtype)

  def get(self, problem_id: str, response_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """`store[problem_id]`, refusing it if the signal was computed on other response tokens."""
    if response_ids is not None and response_checksum(response_ids) != self.response_sha256(problem_id):
      raise ArtifactError(f"{self.directory}: problem {problem_id!r}: the stored signal was computed on other "
                          f"response tokens (sha256 {self.response_sha256(problem_id)}, given "
                          f"{response_checksum(response_ids)})")
    return self[problem_id]

  def verify(self) -> dict[str, int]:
    """Check every shard's sha256 and that the index tiles each shard exactly; return counts."""
    per_shard: dict[int, list[tuple[int, int]]] = {}
    for s, offset, n, _ in self._entries.values():
      per_shard.setdefault(s, []).append((offset, record_bytes(n, self.k, self.logprob_dtype)))
    for s, shard in enumerate(self.manifest["shards"]):
      self._verify_shard(s)
      at = 0
      for offset, size in sorted(per_shard.get(s, [])):
        if offset != at:
          raise ArtifactError(f"{self.directory}: index places a record at byte {offset} of {shard['file']}, "
                              f"expected {at}")
        at += size
      if at != shard["bytes"]:
        raise ArtifactError(f"{self.directory}: index covers {at} bytes of {shard['file']}, which has {shard['bytes']}")
    return dict(self.manifest["counts"])

  def data_source(self) -> "TeacherDataSource":
    return TeacherDataSource(self)

  def __getstate__(self):  # verification is per process
    return {**self.__dict__, "_verified": set()}


class TeacherDataSource:
  """grain RandomAccessDataSource: record i is problem `store.ids[i]`, with its `id`."""

  def __init__(self, store: TeacherStore):
    self.store = store

  def __len__(self) -> int:
    return len(self.store)

  def __getitem__(self, index: int) -> dict[str, Any]:
    pid = self.store.ids[index]
    return {"id": pid, **self.store[pid]}

  def __repr__(self) -> str:
    return f"TeacherDataSource({self.store.directory!r}, size={len(self)})"
