"""Every attention implementation against dense attention (itself checked against numpy float64):
values and q/k/v gradients on packed rows with padding, SmolLM2's 9 query / 3 kv heads, T not a
multiple of the block. The Pallas kernels run in interpret mode; splash sharded over a (data, tensor)
mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from paced_jax import config as config_lib, config_dict, mesh as mesh_lib
from paced_jax.model import attention as attention_lib
from paced_jax.model import decoder as model_lib
from paced_jax.model.config import ModelConfig, RopeConfig

TOL = 1e-5
B, T, H, J, Dh = 2, 200, 9, 3, 32


def packed_segments(T):
  """Row 0: sequences of 70, 79 and 1 tokens, then padding; row 1: left padding, one sequence."""
  row0 = [1] * 70 + [2] * 79 + [4] + [0] * (T - 150)
  row1 = [0] * 30 + [3] * (T - 30)
  return np.array([row0, row1], np.int32)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(B, T, n, Dh)).astype(np.float32) for n in (H, J, J))
  seg = packed_segments(T)
  # The loss weights only real queries: outputs at padding mean nothing (see attention.py).
  w = (rng.normal(size=(B, T, H, Dh)) * (seg > 0)[..., None, None]).astype(np.float32)
  return q, k, v, seg, w


def numpy_reference(q, k, v, seg):
  q, k, v = (x.astype(np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  out = np.zeros(q.shape)
  for b in range(q.shape[0]):
    for t in range(q.shape[1]):
      keys = [s for s in range(t + 1) if seg[b, s] == seg[b, t] != 0]
      for h in range(q.shape[2]):
        if keys:
          logits = k[b, keys, h // G] @ q[b, t, h] / np.sqrt(q.shape[3])
          p = np.exp(logits - logits.max())
          out[b, t, h] = (p / p.sum()) @ v[b, keys, h // G]
  return out


def value_and_grads(impl, q, k, v, seg, w, **kw):
  fn = lambda q, k, v: jnp.sum(attention_lib.attention(q, k, v, jnp.asarray(seg), impl=impl, **kw) * w)
  out = jax.jit(lambda q, k, v: attention_lib.attention(q, k, v, jnp.asarray(seg), impl=impl, **kw))(q, k, v)
  return np.asarray(out), [np.asarray(g) for g in jax.jit(jax.grad(fn, (0, 1, 2)))(q, k, v)]


@pytest.fixture(scope="module")
def dense(inputs):
  return value_and_grads("dense", *inputs)


def assert_matches_dense(got, dense, seg):
  real = seg > 0
  np.testing.assert_allclose(got[0][real], dense[0][real], atol=TOL, rtol=0)
  for name, g, ref in zip("qkv", got[1], dense[1]):
    np.testing.assert_allclose(g, ref, atol=TOL, rtol=TOL, err_msg=f"d{name}")


def test_dense_matches_numpy(inputs, dense):
  q, k, v, seg, _ = inputs
  real = seg > 0
  np.testing.assert_allclose(dense[0][real], numpy_reference(q, k, v, seg)[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("block", [64, 128, 512])  # T = 200: padded to 256, 256; one block of 200
def test_blockwise_matches_dense(inputs, dense, block):
  got = value_and_grads("blockwise", *inputs, block=block)
  assert_matches_dense(got, dense, inputs[3])
  assert np.isfinite(got[0]).all() and all(np.isfinite(g).all() for g in got[1])


def on_mesh(q, k, v, seg, w):
  """Batch over 'data' and the 9 / 3 heads over 'tensor' (3 query heads and 1 kv head per device)."""
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(data=2, fsdp=1, tensor=3), devices=jax.devices()[:6])
  heads = NamedSharding(mesh, P("data", None, "tensor", None))
  return mesh, [jax.device_put(x, heads) for x in (q, k, v)] + [seg, w]


def test_blockwise_matches_dense_sharded(inputs, dense):
  mesh, sharded = on_mesh(*inputs)
  with jax.set_mesh(mesh):
    got = value_and_grads("blockwise", *sharded, block=64)
  assert_matches_dense(got, dense, inputs[3])


def test_splash_matches_dense_sharded(inputs, dense):
  mesh, sharded = on_mesh(*inputs)  # T = 200 is padded to 256 (block 256)
  with jax.set_mesh(mesh):
    got = value_and_grads("splash", *sharded, interpret=True)
  assert_matches_dense(got, dense, inputs[3])


def test_gpu_kernel_matches_dense_in_interpret_mode(inputs, dense):
  # The Pallas GPU kernel's program, run by the Pallas interpreter on CPU (no GPU here): covers
  # the padding to 128, the repeated kv heads and the segment ids; not the Triton lowering.
  got = value_and_grads("gpu", *inputs, interpret=True)
  assert_matches_dense(got, dense, inputs[3])


def test_auto_and_unknown_names():
  assert attention_lib.resolve("auto", 4096, backend="tpu") == "splash"
  assert attention_lib.resolve("auto", 4096, backend="gpu") == "gpu"
  assert attention_lib.resolve("auto", attention_lib.CPU_BLOCKWISE_FROM - 1, backend="cpu") == "dense"
  assert attention_lib.resolve("auto", attention_lib.CPU_BLOCKWISE_FROM, backend="cpu") == "blockwise"
  with pytest.raises(ValueError, match="available: auto, dense"):
    attention_lib.resolve("flash", 128)
  with pytest.raises(config_lib.ConfigError, match="model.attention: 'flash' is not one of auto, dense"):
    config_dict.to_dataclass(config_lib.ModelOptions, {"attention": "flash"}, "config.model")


def test_decoder_training_forward_blockwise_equals_dense():
  """The decoder forward and its parameter gradients, T = 600 (five blocks of 128, the last padded)."""
  cfg = ModelConfig(model_type="llama", vocab_size=64, hidden_size=48, intermediate_size=64, num_layers=2,
                    num_heads=9, num_kv_heads=3, head_dim=16, rms_norm_eps=1e-6, rope=RopeConfig(theta=1e5),
                    tie_word_embeddings=True)
  rng = np.random.default_rng(1)
  Tm = 600
  seg = jnp.asarray(np.array([[1] * 300 + [2] * 250 + [0] * 50, [0] * 40 + [5] * 560], np.int32))
  tokens = jnp.asarray(rng.integers(3, 64, size=(2, Tm)))
  positions = model_lib.positions_from_segments(seg)
  weights = jnp.asarray(rng.normal(size=(2, Tm, 48)).astype(np.float32)) * (seg > 0)[..., None]
  params = nnx.state(model_lib.init_decoder(cfg, seed=0))

  def run(impl):
    graphdef = nnx.graphdef(model_lib.abstract_decoder(cfg.replace(attention=impl)))
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens, positions, seg) * weights)
    hidden = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, positions, seg))(params)
    return np.asarray(hidden), jax.jit(jax.grad(loss))(params)

  hidden_d, grads_d = run("dense")
  hidden_b, grads_b = run("blockwise")
  real = np.asarray(seg) > 0
  np.testing.assert_allclose(hidden_b[real], hidden_d[real], atol=TOL, rtol=0)
  for (path, gd), (_, gb) in zip(nnx.to_flat_state(grads_d), nnx.to_flat_state(grads_b)):
    # Summed over 1,100 tokens these gradients reach ~900: 1e-5 of each parameter's largest.
    gd, gb = np.asarray(gd[...]), np.asarray(gb[...])
    np.testing.assert_allclose(gb, gd, atol=TOL * np.abs(gd).max(), rtol=0, err_msg=str(path))
