"""Shared setup for stage tests: the tiny config in a temp workspace, with prepared problems."""

from __future__ import annotations

import importlib.util
import os

import jax

from paced_jax import config as config_lib, config_dict, mesh as mesh_lib
from paced_jax.model import loaded as loaded_model
from paced_jax.problems import prepare as prepare_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(name: str, variant: str = ""):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def tiny_experiment(workdir: str, variant: str = "", **overrides) -> config_lib.ExperimentConfig:
  c = load_config_file("tiny.py", variant)
  c.workdir = workdir
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg = config_dict.experiment(c)
  p = cfg.problems
  prepare_lib.prepare(workdir, p.source, n_train=p.n_train, n_heldout=p.n_heldout, seed=p.seed)
  return cfg


def load_student(cfg, devices=None):
  mesh = mesh_lib.make_mesh(cfg.mesh, devices if devices is not None else jax.devices())
  return loaded_model.load(cfg.student, mesh, cfg.model)
