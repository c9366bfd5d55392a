"""Decoder parity with transformers (PyTorch) on tiny random checkpoints of every family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx, traverse_util

from paced_jax import mesh as mesh_lib
from paced_jax.model import hf_checkpoint
from paced_jax.model import decoder as model_lib
from tiny_models import FAMILIES, make_tiny_model

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
  directory = make_tiny_model(request.param, str(tmp_path_factory.mktemp(request.param)))
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), devices=jax.devices()[:1])
  cfg, graphdef, params = hf_checkpoint.load_model(directory, mesh)
  hf = transformers.AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
  return cfg, nnx.merge(graphdef, params), hf


def hf_logits(hf, tokens, attention_mask=None, position_ids=None):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens), attention_mask=None if attention_mask is None else torch.tensor(attention_mask),
             position_ids=None if position_ids is None else torch.tensor(position_ids))
  return out.logits.numpy()


def our_logits(model, tokens, positions, segments):
  hidden = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
  return np.asarray(model.logits(hidden))


def test_left_padded_batch_matches_transformers(tiny):
  cfg, model, hf = tiny
  rng = np.random.default_rng(0)
  T = 10
  tokens = rng.integers(3, cfg.vocab_size, size=(3, T))
  lengths = np.array([T, 6, 1])
  mask = (np.arange(T)[None] >= (T - lengths)[:, None]).astype(np.int64)
  tokens = np.where(mask == 1, tokens, 0)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ref = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
  ours = our_logits(model, tokens, positions, mask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(ours[valid], ref[valid], atol=TOL, rtol=0)
  assert np.isfinite(ours).all()


def test_packed_row_matches_separate_sequences(tiny):
  cfg, model, hf = tiny
  rng = np.random.default_rng(1)
  lengths = [5, 7, 3]
  seqs = [rng.integers(3, cfg.vocab_size, size=n) for n in lengths]
  row = np.concatenate(seqs + [np.zeros(2, np.int64)])[None]
  segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(2, np.int64)])[None]
  positions = np.asarray(model_lib.positions_from_segments(jnp.asarray(segments)))
  packed = our_logits(model, row, positions, segments)[0]
  start = 0
  for seq in seqs:
    ref = hf_logits(hf, seq[None], attention_mask=np.ones((1, len(seq)), np.int64))[0]
    np.testing.assert_allclose(packed[start:start + len(seq)], ref, atol=TOL, rtol=0)
    start += len(seq)


def test_gradients_match_transformers(tiny):
  """Backward parity for every parameter: covers the head-major attention and the hand-written
  MLP backward (`model.gated_mlp`), against PyTorch autograd through transformers."""
  cfg, model, hf = tiny
  rng = np.random.default_rng(3)
  tokens = rng.integers(3, cfg.vocab_size, size=(2, 9))
  weights_BTV = rng.normal(size=(2, 9, cfg.vocab_size)).astype(np.float32)
  graphdef, params = nnx.split(model)

  def loss(p):
    m = nnx.merge(graphdef, p)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden = m(jnp.asarray(tokens), positions, jnp.ones(tokens.shape, jnp.int32))
    return jnp.sum(jax.nn.log_softmax(m.logits(hidden)) * weights_BTV)

  grads = traverse_util.flatten_dict(jax.grad(loss)(nnx.to_pure_dict(params)), sep=".")
  hf.zero_grad()
  logits = hf(input_ids=torch.tensor(tokens)).logits
  (torch.log_softmax(logits, -1) * torch.tensor(weights_BTV)).sum().backward()
  hf_grads = {name: p.grad.numpy() for name, p in hf.named_parameters()}
  checked = 0
  for path, grad in grads.items():
    if grad is None:
      continue
    name, transform = hf_checkpoint.hf_name(path)
    for i in range(grad.shape[0]) if "{i}" in name else [None]:
      ours = np.asarray(grad if i is None else grad[i])
      ref = hf_checkpoint.to_ours(hf_grads[name.format(i=i)], ours.shape, transform)
      np.testing.assert_allclose(ours, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), rtol=1e-3, err_msg=path)
      checked += 1
  assert checked == len(hf_grads)


def test_causal(tiny):
  cfg, model, _ = tiny
  rng = np.random.default_rng(2)
  a = rng.integers(3, cfg.vocab_size, size=(1, 9))
  b = a.copy()
  b[0, 6:] = rng.integers(3, cfg.vocab_size, size=3)
  pos, seg = np.arange(9)[None], np.ones((1, 9), np.int64)
  la, lb = our_logits(model, a, pos, seg), our_logits(model, b, pos, seg)
  np.testing.assert_array_equal(la[0, :6], lb[0, :6])
  assert np.abs(la[0, 6:] - lb[0, 6:]).max() > 1e-3


def test_positions_from_segments():
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(model_lib.positions_from_segments(seg),
                                [[0, 1, 2, 0, 1, 0, 1], [0, 1, 0, 1, 2, 3, 4]])


def test_sharded_forward_equals_single_device(tmp_path):
  directory = make_tiny_model("qwen3", str(tmp_path / "m"), num_attention_heads=4, num_key_value_heads=2)
  tokens = np.random.default_rng(3).integers(3, 96, size=(4, 8))
  pos, seg = np.tile(np.arange(8), (4, 1)), np.ones((4, 8), np.int32)
  results = []
  for cfg_mesh, devices in ((mesh_lib.MeshConfig(data=1), jax.devices()[:1]),
                            (mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())):
    mesh = mesh_lib.make_mesh(cfg_mesh, devices)
    cfg, graphdef, params = hf_checkpoint.load_model(directory, mesh)

    @jax.jit
    def forward(params, tokens, pos, seg):
      model = nnx.merge(graphdef, params)
      hidden = model(tokens, pos, seg)
      return model.logits(hidden)

    batch = mesh_lib.batch_sharding(mesh)
    args = [jax.device_put(jnp.asarray(x), batch) for x in (tokens, pos, seg)]
    results.append(np.asarray(forward(params, *args)))
  if len(jax.devices()) == 8:
    specs = [v.sharding.spec for v in jax.tree.leaves(params)]
    assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
  np.testing.assert_allclose(results[0], results[1], atol=1e-5, rtol=0)


def test_bf16_compute_close_to_f32(tmp_path):
  directory = make_tiny_model("llama3", str(tmp_path / "m"))
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  tokens = np.random.default_rng(4).integers(3, 96, size=(2, 8))
  pos, seg = np.tile(np.arange(8), (2, 1)), np.ones((2, 8), np.int32)
  outs = []
  for dtype in ("float32", "bfloat16"):
    cfg, graphdef, params = hf_checkpoint.load_model(directory, mesh, compute_dtype=dtype)
    outs.append(our_logits(nnx.merge(graphdef, params), tokens, pos, seg))
  assert outs[1].dtype == np.float32
  np.testing.assert_allclose(outs[0], outs[1], atol=5e-2)
