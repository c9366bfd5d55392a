"""Paper presets (configs/qwen3_distill.py, ...): every variant converts, carries the paper's
training defaults, fits its TPU slice's device count, and bad variants are refused."""

import importlib.util
import os

import pytest

from paced_jax import aot, config_dict, presets as paper_presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ("qwen3_distill", "qwen25_math_selfdistill", "llama3_distill")


def _module(name):
  spec = importlib.util.spec_from_file_location(f"preset_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(module):
  singles = ["", *paper_presets.METHOD_VARIANTS, *module.SLICES]
  combos = [f"{m},{s}" for m in ("akl", "two_stage,hard_filter") for s in module.SLICES]
  return singles + combos


CASES = [(name, v) for name in PRESETS for v in _variants(_module(name))]


@pytest.mark.parametrize("name,variant", CASES)
def test_every_variant_converts_with_paper_defaults(name, variant):
  module = _module(name)
  cfg = config_dict.experiment(module.get_config(variant))
  t = cfg.train
  # The paper's appendix: lr 1e-7 for distillation; self-distillation keeps the codebase's 1e-6.
  self_distill = cfg.teacher == ""
  assert (t.lr, t.weight_decay, t.grad_clip, t.batch_size) == (1e-6 if self_distill else 1e-7, 0.1, 1.0, 256)
  # The self-distillation teacher sees the expert solution (Figure 3); a teacher model the plain problem.
  assert cfg.prompts.teacher_context == ("solution" if self_distill else "none")
  assert (cfg.model.compute_dtype, cfg.model.param_dtype, cfg.model.remat) == ("bfloat16", "float32", True)
  assert cfg.prompts.enable_thinking is False
  assert cfg.verifier.extract == ("boxed",)
  ps = cfg.pass_rate.sampling
  assert (ps.temperature, ps.top_p, ps.top_k, ps.num_samples) == (1.0, 1.0, 0, 8)
  es = cfg.eval.sampling
  assert (es.temperature, es.top_p, es.top_k, es.num_samples) == (0.7, 0.8, 20, 8)
  names = [b.rpartition("name=")[2].split(",")[0] for b in cfg.eval.benchmarks]
  assert names == ["math500", "aime24", "aime25"]
  assert cfg.eval.retain_set.startswith("/data/")
  # Every response fits its row after the prompt budget.
  for s in (ps, es, cfg.reference.sampling, t.rollout_sampling):
    assert s.max_new_tokens + paper_presets.PROMPT_BUDGET == t.seq_len
  assert t.seq_len % t.loss_chunk == 0

  options = set(variant.split(","))
  if options & set(module.SLICES):
    (slice_name,) = options & set(module.SLICES)
    assert cfg.mesh.distributed
    devices = aot.device_count(slice_name)
    assert cfg.mesh.data * cfg.mesh.fsdp * cfg.mesh.tensor == devices
    rows = t.rows_per_step or t.batch_size
    assert rows % t.micro_batches == 0
    assert (rows // t.micro_batches) % (cfg.mesh.data * cfg.mesh.fsdp) == 0, "micro-batch must shard evenly"
  else:
    assert not cfg.mesh.distributed
  if "akl" in options:
    assert (t.loss, cfg.weights.scheme) == ("akl", "uniform")
  elif "uniform" in options or "hard_filter" in options:
    assert cfg.weights.scheme == ("uniform" if "uniform" in options else "hard_filter")
  else:
    assert cfg.weights.scheme == "paced"
  if "two_stage" in options:  # half the steps each, pass rates recomputed once at the midpoint
    assert (cfg.track, t.stage1_fraction, cfg.pass_rate.recompute_every) == ("two_stage", 0.5, t.steps // 2)
  else:
    assert cfg.pass_rate.recompute_every == 0


def test_preset_models_and_tracks():
  q3 = config_dict.experiment(_module("qwen3_distill").get_config(""))
  assert (q3.student, q3.teacher, q3.track, q3.train.loss) == (
      "/models/Qwen3-1.7B", "/models/Qwen3-8B-GRPO", "distill", "fkl")
  assert q3.train.seq_len == 512 + 8192
  sd = config_dict.experiment(_module("qwen25_math_selfdistill").get_config(""))
  assert (sd.teacher, sd.track, sd.train.loss, sd.prompts.teacher_context) == (
      "", "self_distill", "rkl", "solution")
  assert sd.train.seq_len <= aot.known_architecture("Qwen2.5-Math-7B").max_position_embeddings
  ll = config_dict.experiment(_module("llama3_distill").get_config("v5p-64"))
  assert (ll.student, ll.teacher, ll.track) == ("/models/Llama-3.1-8B-Instruct", "/models/Llama-3.3-70B-Instruct",
                                                "distill")
  assert 4 <= ll.mesh.tensor <= 8


def test_two_stage_recompute_follows_a_changed_step_count():
  c = _module("qwen3_distill").get_config("two_stage")
  c.train.steps = 300  # what --config.train.steps=300 does
  cfg = config_dict.experiment(c)
  assert (cfg.train.steps, cfg.pass_rate.recompute_every) == (300, 150)
  assert int(cfg.train.stage1_fraction * cfg.train.steps) == 150  # the recompute sits at the switch


def test_variants_change_the_workdir_but_slices_do_not():
  m = _module("qwen3_distill")
  assert m.get_config("akl").workdir != m.get_config("").workdir
  assert m.get_config("v5p-64").workdir == m.get_config("").workdir  # resume on another slice


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("variant,message", [
    ("bogus", "unknown variant"),
    ("uniform,v5p-9", "unknown variant"),
    ("uniform,hard_filter", "pick one"),
    ("v5p-64,v6e-64", "pick one"),
])
def test_bad_variants_raise(name, variant, message):
  with pytest.raises(ValueError, match=message):
    _module(name).get_config(variant)


def test_long_variant_packs_the_papers_longest_training_responses():
  c = config_dict.experiment(_module("qwen3_distill").get_config("v5e-256,long"))
  assert c.train.seq_len == paper_presets.PROMPT_BUDGET + 16384 and c.mesh.fsdp == 256


@pytest.mark.parametrize("name", ["qwen3_distill", "llama3_distill", "qwen25_math_selfdistill"])
def test_slices_with_paged_rollouts_set_every_sampling_stage(name):
  from paced_jax.sampling import decoding
  module = _module(name)
  assert config_dict.experiment(module.get_config("")).pass_rate.sampling.kv_cache == "dense"  # one host: CPU-safe
  for slice_name, s in module.SLICES.items():
    cfg = config_dict.experiment(module.get_config(slice_name))
    stages = (cfg.pass_rate.sampling, cfg.reference.sampling, cfg.train.rollout_sampling, cfg.eval.sampling)
    if not s.rollout_rows_per_device:
      assert all(x.kv_cache == "dense" for x in stages)
      continue
    mcfg = aot.resolve_model(cfg.student)[0].replace(compute_dtype=cfg.model.compute_dtype)
    for x in stages:
      assert (x.kv_cache, x.rows_per_device, x.cache_gib) == ("paged", s.rollout_rows_per_device, s.rollout_cache_gib)
      # The allocator needs a device's pool to hold one row at full length.
      pages = int(x.cache_gib * (1 << 30)) // decoding.page_bytes(mcfg, x.page_size)
      assert pages >= -(-(paper_presets.PROMPT_BUDGET + x.max_new_tokens) // x.page_size)
