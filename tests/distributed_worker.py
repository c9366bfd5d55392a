"""One process of tests/test_distributed.py: a few train steps of a tiny model on a global mesh.

  python tests/distributed_worker.py --model_dir=D --out=O [--coordinator=localhost:P --num_processes=2 --process_id=i]

The parent sets the local device count (XLA_FLAGS). Every process builds the same deterministic
batches but fills the rows it does not hold with garbage before handing them to the library: if a
process read another's rows, its result would differ from the one-process run. Writes the
gathered final parameters and the per-step losses to O/process_<i>.npz.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

ROWS, SEQ_LEN, TOP_K, VOCAB = 8, 16, 4, 98
MESH = dict(data=2, fsdp=2, tensor=2)  # every kind of collective: batch, fsdp and tensor sharding


def examples(step: int, vocab: int):
  from paced_jax.training import packing
  rng = np.random.default_rng(1000 + step)
  out = []
  for i in range(ROWS):
    prompt_len, response_len = int(rng.integers(2, 6)), int(rng.integers(4, 10))
    logits_RV = rng.normal(size=(response_len, vocab)) * 2
    logp_RV = logits_RV - np.log(np.exp(logits_RV).sum(-1, keepdims=True))
    ids_RK = np.argsort(-logp_RV, axis=-1)[:, :TOP_K]
    top_RK = np.take_along_axis(logp_RV, ids_RK, -1)
    out.append(packing.Example(rng.integers(3, vocab, size=prompt_len + response_len).astype(np.int32), prompt_len,
                               ids_RK.astype(np.int32), top_RK.astype(np.float32),
                               (1 - np.exp(top_RK).sum(-1)).astype(np.float32), float(rng.uniform(0.2, 1.5)),
                               pass_bucket=i % 3))
  return out


def only_local_rows(x: np.ndarray, sharding) -> np.ndarray:
  """`x` with the rows this process's devices do not hold overwritten by garbage."""
  local = np.zeros(x.shape[0], bool)
  for index in sharding.addressable_devices_indices_map(x.shape).values():
    local[index[0]] = True
  garbage = np.full_like(x, -7) if x.dtype.kind in "iu" else np.full_like(x, np.nan)
  return np.where(local.reshape(-1, *([1] * (x.ndim - 1))), x, garbage)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()

  import jax
  from flax import nnx, traverse_util
  from paced_jax import mesh as mesh_lib
  from paced_jax.model import hf_checkpoint
  from paced_jax.training import packing
  from paced_jax.config import TrainConfig
  from paced_jax.training import train_step as ts

  # The library's own multi-process entry: MeshConfig(distributed=True) -> jax.distributed.initialize.
  mesh_cfg = mesh_lib.MeshConfig(**MESH, distributed=args.num_processes > 1, coordinator_address=args.coordinator,
                                 num_processes=args.num_processes, process_id=args.process_id)
  mesh = mesh_lib.make_mesh(mesh_cfg)
  assert jax.process_count() == args.num_processes and jax.process_index() == args.process_id
  _, graphdef, params = hf_checkpoint.load_model(args.model_dir, mesh)
  cfg = ts.StepConfig(graphdef, TrainConfig(steps=args.steps, lr=1e-2, weight_decay=0.01, loss_chunk=8),
                      num_pass_buckets=3, valid_vocab=VOCAB)
  pure = nnx.to_pure_dict(params)
  state = ts.init_state(pure, cfg, seed=0)
  sharding = ts.state_shardings(state, jax.tree.map(lambda x: x.sharding, pure), mesh, cfg)
  state = jax.device_put(state, sharding)
  step = ts.jit_train_step(cfg, sharding, mesh)
  batch_sharding = ts.Batch.shardings(mesh)
  losses = []
  for s in range(args.steps):
    batch_np, dropped = packing.pack(examples(s, VOCAB), ROWS, SEQ_LEN, TOP_K)
    assert dropped == 0
    mine = jax.tree.map(only_local_rows, batch_np, batch_sharding)
    assert np.isnan(mine.weight).any() == (args.num_processes > 1)  # other processes' rows are garbage here
    state, metrics = step(state, jax.tree.map(mesh_lib.from_host, mine, batch_sharding))
    losses.append(float(jax.device_get(metrics["loss"])))
  flat = {"/".join(map(str, k)): mesh_lib.to_host(v) for k, v in traverse_util.flatten_dict(state.params).items()}
  os.makedirs(args.out, exist_ok=True)
  np.savez(os.path.join(args.out, f"process_{args.process_id}.npz"), losses=np.asarray(losses), **flat)
  print(f"process {args.process_id}/{args.num_processes}: losses {losses}", flush=True)


if __name__ == "__main__":
  main()
