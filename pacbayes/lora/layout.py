"""Where a LoRA sits in a model, and the one merge W' = W + s B A (Hu et al. 2021, eq. 3).

A LoRA adapter changes each adapted weight matrix of a base checkpoint by a low-rank product,

    W' = W + s * B A,     A: [r, in],  B: [out, r],   s = alpha / r   (alpha / sqrt(r) with
                                                                       rsLoRA, Kalajdzievski 2023)

with W in torch's (out, in) layout. GPT-2 stores its projections as `Conv1D` weights in the
(in, out) layout; PEFT then sets `fan_in_fan_out` and adds the transpose (B A)^T. This module
follows PEFT's rule that the layer type decides the layout (PEFT overrides the flag to match
the layer), so both spellings of a GPT-2 adapter merge the same way.

The LoRA pytree used throughout is `{module: {"A": [r, in], "B": [out, r]}}` (float32),
`module` the Hugging Face module name. Folders (PEFT's format) are in `pacbayes.lora.folder`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Module names that LoRA may adapt, per family (the projections of the name table).
TARGETS = {
  "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
  "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
  "gpt2": ("c_attn", "c_proj", "c_fc"),
}


@dataclasses.dataclass(frozen=True)
class LoraModule:
  """One adapted matrix.

  Attributes:
    name: Hugging Face module name (its weight is `name + ".weight"`).
    in_features, out_features: sizes of A's columns and B's rows.
    conv1d: the base weight is a GPT-2 `Conv1D` ((in, out) layout, PEFT's fan_in_fan_out).
    nnx_paths: the NNX kernels the HF weight maps to (three for GPT-2's fused c_attn).
    kind: how the HF-layout array maps to those kernels: "same", "transpose" or "split3".
  """

  name: str
  in_features: int
  out_features: int
  conv1d: bool
  nnx_paths: tuple[tuple[str | int, ...], ...]
  kind: str


@dataclasses.dataclass(frozen=True)
class LoraLayout:
  """Where a LoRA of one rank sits in one architecture.

  Attributes:
    modules: the adapted matrices, in name-table order.
    rank: r.
    alpha: lora_alpha.
    use_rslora: scaling alpha / sqrt(r) instead of alpha / r.
  """

  modules: tuple[LoraModule, ...]
  rank: int
  alpha: float
  use_rslora: bool = False

  @property
  def scaling(self) -> float:
    """s = alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT `LoraLayer.update_layer`)."""
    return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

  @property
  def num_params(self) -> int:
    """Number of LoRA parameters: sum over modules of r * (in + out)."""
    return sum(self.rank * (m.in_features + m.out_features) for m in self.modules)

  @property
  def hf_weight_names(self) -> list[str]:
    """Hugging Face names of the adapted weights (`<module>.weight`)."""
    return [m.name + ".weight" for m in self.modules]

  @property
  def nnx_paths(self) -> list[tuple[str | int, ...]]:
    """NNX parameter paths changed by the merge."""
    return [p for m in self.modules for p in m.nnx_paths]


def _mapping_kind(entry: Any, shape: tuple[int, ...]) -> str:
  # Probe the name table's load hook with a labelled array to learn its layout.
  probe = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
  parts = entry.load(probe)
  if len(parts) == 1 and np.array_equal(np.asarray(parts[0]), probe):
    return "same"
  if len(parts) == 1 and np.array_equal(np.asarray(parts[0]), probe.T):
    return "transpose"
  if len(parts) == 3 and all(np.array_equal(np.asarray(a), b) for a, b in
                             zip(parts, np.split(probe, 3, axis=-1), strict=True)):
    return "split3"
  raise RuntimeError(f"unknown layout of {entry.hf_name} in the name table")


def module_matches(module: str, targets: str | Sequence[str]) -> bool:
  """PEFT's target rule: a regex string must match the whole name; a list entry must equal
  the name or its last dotted components."""
  if isinstance(targets, str):
    return re.fullmatch(targets, module) is not None
  return any(module == t or module.endswith("." + t) for t in targets)


def make_layout(config: Any, targets: str | Sequence[str], rank: int, alpha: float, *,
                use_rslora: bool = False, where: str = "--lora-targets",
                rank_where: str | None = None) -> LoraLayout:
  """The adapted matrices of a model for PEFT-style `target_modules`.

  Args:
    config: the base `pacbayes.models.ModelConfig`.
    targets: module names (e.g. ["q_proj", "v_proj"]) or one regular expression.
    rank: r >= 1.
    alpha: lora_alpha > 0.
    use_rslora: rsLoRA scaling.
    where: label for error messages about the targets (a flag or a file).
    rank_where: label for error messages about the rank (default `where`).

  Returns:
    The `LoraLayout`.

  Raises:
    ValueError: a target outside the family's projections, one that matches nothing, or a
      rank larger than a matrix.
  """
  from pacbayes.models import param_table

  rank_where = where if rank_where is None else rank_where
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"{rank_where}: LoRA rank must be a positive integer, got {rank!r}")
  if isinstance(alpha, bool) or not (isinstance(alpha, int | float) and alpha > 0 and
                                      math.isfinite(alpha)):
    raise ValueError(f"{where}: lora_alpha must be a positive number, got {alpha!r}")
  allowed = TARGETS[config.model_type]
  if isinstance(targets, str):
    try:
      re.compile(targets)
    except re.error as e:
      raise ValueError(f"{where}: target_modules {targets!r} is not a valid regular expression "
                       f"({e})") from None
  elif not isinstance(targets, list | tuple):
    raise ValueError(f"{where}: target_modules must be a list of module names or one regular "
                     f"expression string, got {targets!r}")
  else:
    targets = list(targets)
    if not targets:
      raise ValueError(f"{where}: no LoRA target modules given")
    for t in targets:
      if not isinstance(t, str) or t.split(".")[-1] not in allowed:
        raise ValueError(f"{where}: target {t!r} is not supported for model_type="
                         f"{config.model_type!r}; expected module names from {allowed}")
  modules = []
  matched_targets = set()
  for entry in param_table(config):
    if not entry.hf_name.endswith(".weight"):
      continue
    module = entry.hf_name[: -len(".weight")]
    if not module_matches(module, targets):
      continue
    if module.split(".")[-1] not in allowed:
      raise ValueError(f"{where}: module {module!r} matches the targets but LoRA is only "
                       f"supported on {allowed}")
    if not isinstance(targets, str):
      matched_targets.update(t for t in targets if module == t or module.endswith("." + t))
    conv1d = config.model_type == "gpt2"
    shape = _hf_shape(config, entry)
    in_f, out_f = (shape[0], shape[1]) if conv1d else (shape[1], shape[0])
    if rank > min(in_f, out_f):
      raise ValueError(f"{rank_where}: rank {rank} exceeds min(in, out) = {min(in_f, out_f)} of "
                       f"{module}")
    modules.append(LoraModule(module, in_f, out_f, conv1d, tuple(entry.nnx_paths),
                              _mapping_kind(entry, shape)))
  if not modules:
    raise ValueError(f"{where}: the targets {targets!r} match no module of this "
                     f"{config.model_type} model")
  if not isinstance(targets, str):
    unused = [t for t in targets if t not in matched_targets]
    if unused:
      raise ValueError(f"{where}: target {unused[0]!r} matches no module of this model")
  return LoraLayout(tuple(modules), int(rank), float(alpha), bool(use_rslora))


def _hf_shape(config: Any, entry: Any) -> tuple[int, int]:
  d, h, k, dh, f = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                    config.head_dim, config.intermediate_size)
  last = entry.hf_name.split(".")[-2]
  if config.model_type == "gpt2":  # Conv1D (in, out)
    return {"c_attn": (d, 3 * d), "c_proj": (d, d) if ".attn." in entry.hf_name else (f, d),
            "c_fc": (d, f)}[last]
  return {"q_proj": (h * dh, d), "k_proj": (k * dh, d), "v_proj": (k * dh, d),
          "o_proj": (d, h * dh), "gate_proj": (f, d), "up_proj": (f, d),
          "down_proj": (d, f)}[last]


# ----------------------------------------------------------------------------------------------
# The one merge (used by merged weights, LoRA-space evaluation and LoRA training).


def delta_nnx(module: LoraModule, a_RxI: jax.Array, b_OxR: jax.Array,
              scaling: float) -> list[jax.Array]:
  """s * B A mapped onto the module's NNX kernels, float32 (jit-able).

  PEFT's `get_delta_weight` is transpose(B A, fan_in_fan_out) * s in the HF layout of the
  weight; the name table's layout then turns it into [in, out] kernels (split for c_attn).
  """
  delta_OxI = scaling * jnp.matmul(b_OxR.astype(jnp.float32), a_RxI.astype(jnp.float32),
                                   precision=jax.lax.Precision.HIGHEST)
  hf = delta_OxI.T if module.conv1d else delta_OxI
  if module.kind == "same":
    return [hf]
  if module.kind == "transpose":
    return [hf.T]
  return list(jnp.split(hf, 3, axis=-1))


def merge_params(base_params: Any, layout: LoraLayout, lora: Mapping[str, Any]) -> Any:
  """NNX parameters with every adapted kernel replaced by W + s * B A (cast to W's dtype).

  Args:
    base_params: the base `nnx.State` of parameters (from `nnx.split(model, nnx.Param, ...)`).
    layout: the adapted matrices.
    lora: `{module: {"A": [r, in], "B": [out, r]}}`.

  Returns:
    A state of the same structure; untouched leaves are the base's own arrays.
  """
  from flax import nnx

  flat = dict(nnx.to_flat_state(base_params))
  for module in layout.modules:
    parts = delta_nnx(module, lora[module.name]["A"], lora[module.name]["B"], layout.scaling)
    for path, d in zip(module.nnx_paths, parts, strict=True):
      var = flat[path]
      w = var[...]
      flat[path] = var.replace(value=(w.astype(jnp.float32) + d).astype(w.dtype))
  return nnx.from_flat_state([(p, flat[p]) for p in dict(nnx.to_flat_state(base_params))])


def lora_apply(graphdef: Any, rest: Any, layout: LoraLayout):
  """apply(params, input_ids, attention_mask) -> logits with params = {"lora", "base"}.

  The base enters as an argument (not a jit constant) so that one compiled program serves
  large models; gradients flow only into "lora" when the caller stops them on "base".
  """
  from flax import nnx

  def apply(params, input_ids_BxL, attention_mask_BxL):
    merged = merge_params(params["base"], layout, params["lora"])
    return nnx.merge(graphdef, merged, rest)(input_ids_BxL, attention_mask=attention_mask_BxL)

  return apply


def init_lora(layout: LoraLayout, *, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
  """PEFT's default initialisation: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (float32).

  This is torch's `kaiming_uniform_(a=sqrt(5))` on A (bound sqrt(6 / ((1 + 5) * in))), as PEFT
  does for `init_lora_weights=True`; with B = 0 the merged model starts at the base.
  """
  def draw(key):
    out = {}
    for k, m in zip(jax.random.split(key, len(layout.modules)), layout.modules, strict=True):
      bound = 1.0 / math.sqrt(m.in_features)
      out[m.name] = {
        "A": jax.random.uniform(k, (layout.rank, m.in_features), jnp.float32, -bound, bound),
        "B": jnp.zeros((m.out_features, layout.rank), jnp.float32)}
    return out

  return jax.jit(draw)(key)  # one compiled program instead of one per module shape
