"""LoRA adapters for `pacbayes bound`: a base with an adapter, merged (weight space) or as a
LoRA parameter space (SubLoRA-style).

The layout and the merge live in `pacbayes.lora.layout`, PEFT folders in
`pacbayes.lora.folder`; their public names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from pacbayes.lora.folder import (
  ADAPTER_CONFIG,
  ADAPTER_WEIGHTS,
  BASE_FINGERPRINT,
  INIT_INFO,
  INIT_WEIGHTS,
  KEY_PREFIX,
  Adapter,
  adapter_config,
  base_names,
  check_adapter_config,
  check_base,
  is_adapter_folder,
  lora_tensors,
  read_adapter,
  write_adapter,
)
from pacbayes.lora.layout import (
  TARGETS,
  LoraLayout,
  LoraModule,
  delta_nnx,
  init_lora,
  lora_apply,
  make_layout,
  merge_params,
  module_matches,
)

__all__ = [
  "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "BASE_FINGERPRINT", "INIT_INFO", "INIT_WEIGHTS",
  "KEY_PREFIX", "TARGETS", "Adapter", "LoraCheckpoint", "LoraLayout", "LoraModule", "LoraSpace",
  "adapter_config", "base_names", "check_adapter_config", "check_base", "delta_nnx",
  "init_lora", "is_adapter_folder", "load_lora", "lora_apply", "lora_space", "lora_tensors",
  "make_layout", "merge_params", "module_matches", "read_adapter", "write_adapter",
]


@dataclasses.dataclass(frozen=True, eq=False)
class LoraCheckpoint:
  """A base checkpoint with an adapter, loaded and merged.

  Attributes:
    graphdef, rest: from `nnx.split(model, nnx.Param, ...)` of the base model.
    base_params: the base parameters (the prior mean in weight space).
    merged_params: W + s B A on the adapted kernels, the base elsewhere (posterior mean).
    config: the base `ModelConfig`.
    adapter: the `Adapter`.
    adapted_hf_names: Hugging Face weight names of the adapted matrices.
    adapted_mask: pytree of bools like `base_params`, True on adapted kernels.
  """

  graphdef: Any
  rest: Any
  base_params: Any
  merged_params: Any
  config: Any
  adapter: Adapter
  adapted_hf_names: list[str]
  adapted_mask: Any


def load_lora(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, *,
              dtype: str | None = None, accept_base: bool = False) -> LoraCheckpoint:
  """Loads a base folder and a PEFT adapter folder; merges the adapter (weight-space view).

  Args:
    base_dir: the base Hugging Face folder (`pacbayes.models.load_pretrained`).
    adapter_dir: the PEFT adapter folder.
    dtype: parameter dtype (default the base's); the merge is done in float32 and rounded
      once to this dtype.
    accept_base: for an adapter without a content fingerprint whose recorded base name does
      not match `base_dir`: accept it (the caller states this is its base; see
      `pacbayes.lora.folder.check_base`).

  Returns:
    A `LoraCheckpoint`.

  Raises:
    ValueError: see `read_adapter` and `load_pretrained`.
  """
  from flax import nnx

  from pacbayes.models import load_pretrained

  model, config = load_pretrained(base_dir, dtype=dtype)
  adapter = read_adapter(adapter_dir, config, base_dir, accept_base=accept_base)
  graphdef, base, rest = nnx.split(model, nnx.Param, ...)
  merged = jax.jit(lambda p, lo: merge_params(p, adapter.layout, lo))(base, adapter.lora)
  adapted = set(adapter.layout.nnx_paths)
  mask = nnx.from_flat_state([(p, v.replace(value=p in adapted))
                              for p, v in nnx.to_flat_state(base)])
  return LoraCheckpoint(graphdef, rest, base, merged, config, adapter,
                        adapter.layout.hf_weight_names, mask)


@dataclasses.dataclass(frozen=True, eq=False)
class LoraSpace:
  """The posterior in LoRA parameter space (SubLoRA-style; Lotfi et al. 2024).

  Parameters are `{"lora": {module: {"A", "B"}}, "base": base_params}`; only the "lora"
  leaves are perturbed (`perturbed_mask`), the base is identical in prior and posterior.
  The prior mean is the recorded data-independent initialisation (A0, B0 = 0), the posterior
  mean the trained (A, B): a valid PAC-Bayes prior because A0 was drawn before seeing S.

  Attributes:
    prior, posterior: the two parameter pytrees.
    perturbed_mask: pytree of bools like them, True on the LoRA leaves.
    apply: apply(params, input_ids, attention_mask) -> logits (see `lora_apply`).
    num_params: number of LoRA parameters, sum r * (in + out).
    layout: the adapted matrices.
  """

  prior: Any
  posterior: Any
  perturbed_mask: Any
  apply: Any
  num_params: int
  layout: LoraLayout

  def loss_fn(self, loss: str = "token_error", **options: Any):
    """loss_fn(params, batch) -> [B] bounded loss (`pacbayes.posterior.perturb`, certificates).

    `options` go to `pacbayes.losses.get_loss` (e.g. ``alpha`` of the smoothed NLL).
    """
    from pacbayes.losses import get_loss

    fn = get_loss(loss, **options)
    apply = self.apply

    def loss_fn(params, batch):
      logits = apply(params, batch["input_ids"], batch["attention_mask"])
      return fn(logits, batch["input_ids"], batch["loss_mask"])

    return loss_fn


def lora_space(checkpoint: LoraCheckpoint) -> LoraSpace:
  """The LoRA-parameter-space view of a loaded adapter whose initialisation is recorded.

  Raises:
    ValueError: the adapter does not record its initialisation (not written by
      `pacbayes finetune`), so no data-independent prior is known.
  """
  adapter = checkpoint.adapter
  if adapter.init is None:
    raise ValueError(f"{adapter.path}: the adapter does not record its initialisation "
                     f"({INIT_INFO}); only the merged (weight-space) posterior is available")
  post = {"lora": jax.tree.map(jnp.asarray, adapter.lora), "base": checkpoint.base_params}
  prior = {"lora": jax.tree.map(jnp.asarray, adapter.init), "base": checkpoint.base_params}
  mask = {"lora": jax.tree.map(lambda _: True, adapter.lora),
          "base": jax.tree.map(lambda _: False, checkpoint.base_params)}
  return LoraSpace(prior, post, mask, lora_apply(checkpoint.graphdef, checkpoint.rest,
                                                 adapter.layout),
                   adapter.layout.num_params, adapter.layout)
