"""Strict test settings: 8 CPU devices for mesh tests, float64, rank promotion raises."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
  """Folder of a random tiny Llama (tests.helpers.models.save_tiny_llama, seed 0): read only."""
  from tests.helpers.models import save_tiny_llama

  return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "model")
