"""config.json parsing: both transformers layouts, and errors that name the file and field."""

import json

import pytest

from paced_jax.model import config as mc

BASE = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def test_old_and_new_rope_layouts_agree():
  scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=8192)
  old = mc.from_hf_dict({**BASE, "rope_theta": 5e5, "rope_scaling": scaling})
  new = mc.from_hf_dict({**BASE, "rope_parameters": {**scaling, "rope_theta": 5e5}})
  assert old == new and old.rope.kind == "llama3" and old.rope.theta == 5e5


def test_family_flags():
  qwen2 = mc.from_hf_dict({**BASE, "model_type": "qwen2"})
  assert qwen2.qkv_bias and not qwen2.o_bias and not qwen2.qk_norm
  qwen3 = mc.from_hf_dict({**BASE, "model_type": "qwen3", "head_dim": 128})
  assert qwen3.qk_norm and qwen3.head_dim == 128 and not qwen3.qkv_bias
  assert mc.from_hf_dict(BASE).head_dim == 16


def test_round_trip_through_hf_dict():
  cfg = mc.from_hf_dict({**BASE, "model_type": "qwen3", "head_dim": 32, "eos_token_id": [2, 3]})
  assert mc.from_hf_dict(mc.to_hf_dict(cfg)) == cfg
  assert mc.ModelConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


@pytest.mark.parametrize("change,match", [
    ({"num_key_value_heads": 3}, "not a multiple"),
    ({"vocab_size": None}, "'vocab_size' is missing"),
    ({"use_sliding_window": True}, "sliding-window"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "'dynamic'"),
])
def test_errors(tmp_path, change, match):
  (tmp_path / "config.json").write_text(json.dumps({**BASE, **change}))
  with pytest.raises(mc.ModelConfigError, match=match) as err:
    mc.load_model_config(str(tmp_path))
  assert str(tmp_path / "config.json") in str(err.value)


def test_invalid_json_names_line(tmp_path):
  (tmp_path / "config.json").write_text('{\n"model_type": "llama",\n oops\n}')
  with pytest.raises(mc.ModelConfigError, match="line 3"):
    mc.load_model_config(str(tmp_path))
