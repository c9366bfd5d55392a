"""Ahead-of-time compile check: the tiny train step compiles for 8 fake devices without
allocating, and the known-architecture table matches the published model sizes."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

from paced_jax import aot, aot_decode, config_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AOT_PYTHON = os.path.join(ROOT, ".venv", "aot", "bin", "python")


def _config(path, variant=""):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def test_tiny_train_step_compiles_on_8_fake_devices():
  c = _config("configs/tiny.py")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.train.micro_batches = 2
  report = aot.compile_train_step(config_dict.experiment(c), aot.cpu_target(8))
  assert report.target.platform == "cpu" and len(report.target.devices) == 8
  assert report.mesh == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report.argument_bytes > 0 and report.output_bytes > 0 and report.temp_bytes > 0
  assert report.peak_bytes > 0 and report.resident_bytes > 0
  assert report.flops and report.flops > 0 and report.analytic_flops > 0
  # The donated train state comes back in place.
  assert 0 < report.alias_bytes <= report.output_bytes
  text = aot.format_report(report)
  assert "CPU compile" in text and "peak estimate" in text and not report.notes


@pytest.mark.parametrize("kv_cache", ["dense", "paged"])
def test_tiny_decode_step_compiles_on_8_fake_devices(kv_cache):
  c = _config("configs/tiny.py")
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  s = c.pass_rate.sampling
  s.rows_per_device, s.max_new_tokens, s.kv_cache, s.page_size, s.prompt_buckets = 3, 100, kv_cache, 16, [32]
  cfg = config_dict.experiment(c)
  mcfg = aot.resolve_model(cfg.student)[0]
  per_token = 2 * mcfg.num_layers * mcfg.num_kv_heads * mcfg.head_dim * 4   # keys + values, float32
  # A pool of 10 pages per device, against 3 rows x 8 pages at full length (32 prompt + 100 new slots).
  s.cache_gib = 10.5 * 16 * per_token / (1 << 30)
  report = aot_decode.compile_decode_step(config_dict.experiment(c), aot.cpu_target(8), prompt_len=20, window=64)
  assert report.rows == 12 and report.rows_per_device == 3
  if kv_cache == "dense":
    assert report.slots == 132 and report.cache_bytes == 3 * 132 * per_token
  else:
    assert report.slots == 144 and report.window == 64 and report.pool_tokens == 160
    assert report.cache_bytes == 160 * per_token and report.paged_attention == "gather"  # CPU: no ragged kernel
    assert "10 per device = 160 tokens, for 3 rows of up to 9 pages (144 slots) each = 27 pages" in \
        aot_decode.format_report(report)
  assert report.argument_bytes >= report.cache_bytes + report.weights_bytes
  assert report.temp_bytes > 0 and "decode step" in aot_decode.format_report(report)


def test_tool_compiles_a_distributed_preset_as_one_process():
  # The pod presets set mesh.distributed: compiling must not try to join a multi-process run.
  out = _run_tool(sys.executable, "--config=configs/tiny.py", "--config.mesh.distributed=True", "--devices=4",
                  "--steps=decode")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "decode step" in out.stdout and "temporaries" in out.stdout


# The model cards' parameter counts (the names round them: Qwen3-8B has 8.2B, Qwen2.5-Math-7B 7.61B).
PUBLISHED = {"Qwen3-1.7B": 1.7e9, "Qwen3-8B": 8.2e9, "Qwen2.5-Math-7B": 7.61e9, "Llama-3.1-8B": 8.03e9,
             "Llama-3.3-70B": 70.6e9, "SmolLM2-135M": 135e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_known_architectures_match_published_sizes(name):
  n = aot.param_count(aot.known_architecture(name))
  assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.02, f"{name}: {n / 1e9:.3f}B"
  assert aot.KNOWN_ARCHITECTURES[name]["published_params"] == PUBLISHED[name]


def test_resolve_model(tmp_path):
  for spec, name in [("/models/Qwen3-1.7B", "Qwen3-1.7B"), ("/models/Qwen3-8B-GRPO", "Qwen3-8B"),
                     ("/models/Qwen2.5-Math-7B-Instruct", "Qwen2.5-Math-7B"),
                     ("/models/Llama-3.3-70B-Instruct", "Llama-3.3-70B"), ("Llama-3.1-8B", "Llama-3.1-8B")]:
    cfg, vocab, where = aot.resolve_model(spec)
    assert where == f"known architecture {name}" and vocab <= cfg.vocab_size
  hf = {k: v for k, v in aot.KNOWN_ARCHITECTURES["Qwen3-1.7B"].items() if k not in ("tokenizer_vocab", "published_params")}
  hf["num_hidden_layers"] = 2
  (tmp_path / "config.json").write_text(json.dumps(hf))
  cfg, vocab, where = aot.resolve_model(str(tmp_path))
  assert cfg.num_layers == 2 and vocab is None and where.endswith("config.json")
  assert aot.resolve_model(str(tmp_path / "config.json"))[0].num_layers == 2
  with pytest.raises(aot.AOTError, match="known architecture"):
    aot.resolve_model("/models/GPT-5")


def test_tpu_slices():
  assert aot.tpu_slice("v5p-64")[:2] == ("v5p:2x4x4", 32)
  assert aot.tpu_slice("v5e-256")[:2] == ("v5e:16x16", 256)
  assert aot.tpu_slice("v6e-64")[:2] == ("v6e:8x8", 64)
  assert aot.tpu_slice("v4-32")[:2] == ("v4:2x2x4", 16)
  assert aot.tpu_slice("v5p:2x2x1")[1] == 4
  for bad in ("v5p-63", "v7-8", "tpu"):
    with pytest.raises(aot.AOTError):
      aot.tpu_slice(bad)


def test_presets_resolve_without_checkpoints():
  for path in ("configs/qwen3_distill.py", "configs/qwen25_math_selfdistill.py", "configs/llama3_distill.py"):
    cfg = config_dict.experiment(_config(path))
    aot.resolve_model(cfg.student)
    if cfg.teacher:
      aot.resolve_model(cfg.teacher)


def test_cpu_target_needs_enough_devices():
  with pytest.raises(aot.AOTError, match="xla_force_host_platform_device_count"):
    aot.cpu_target(len(jax.devices("cpu")) + 1)


def _run_tool(python, *args):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  return subprocess.run([python, "-m", "paced_jax.tools.aot_check", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tool_compiles_tiny_for_fake_cpu_devices():
  out = _run_tool(sys.executable, "--config=configs/tiny.py", "--devices=4", "--topology=v5p-8", "--platform=cpu")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 fake CPU devices standing in for v5p-8" in out.stdout
  assert "CPU compile" in out.stdout and "peak estimate" in out.stdout
  bad = _run_tool(sys.executable, "--config=configs/tiny.py", "--topology=v9x-8")
  assert bad.returncode != 0 and "v9x-8" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(AOT_PYTHON), reason="no .venv/aot with libtpu (bash launch/aot_env.sh)")
def test_tool_compiles_tiny_for_a_tpu_topology():
  out = _run_tool(AOT_PYTHON, "--config=configs/tiny.py", "--topology=v5p-8")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "TPU compile" in out.stdout and "TPU v5" in out.stdout and "fits" in out.stdout
