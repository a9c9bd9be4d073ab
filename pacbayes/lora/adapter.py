"""LoRA adapters in PEFT's folder format: read, check against a base, merge, LoRA-space view.

A LoRA adapter (Hu et al. 2021, "LoRA: Low-rank adaptation of large language models",
eq. 3) changes each adapted weight matrix of a base checkpoint by a low-rank product,

    W' = W + s * B A,     A: [r, in],  B: [out, r],   s = alpha / r   (alpha / sqrt(r) with
                                                                       rsLoRA, Kalajdzievski 2023)

with W in torch's (out, in) layout. GPT-2 stores its projections as `Conv1D` weights in the
(in, out) layout; PEFT then sets `fan_in_fan_out` and adds the transpose (B A)^T. This module
follows PEFT's rule that the layer type decides the layout (PEFT overrides the flag to match
the layer), so both spellings of a GPT-2 adapter merge the same way.

Folder format (what `peft` writes and reads): `adapter_config.json` (a `LoraConfig`) and
`adapter_model.safetensors` with tensors `base_model.model.<module>.lora_A.weight` ([r, in])
and `...lora_B.weight` ([out, r]), `<module>` the Hugging Face module name, e.g.
`model.layers.0.self_attn.q_proj` or `transformer.h.0.attn.c_attn`. Adapters written by
`pacbayes finetune` add `pacbayes_lora.json` (seed and initialisation rule) and
`pacbayes_lora_init.safetensors` (the initial A and B, same key names): the data-independent
initialisation that the LoRA-space prior of `lora_space` is centred on.

Supported: `peft_type` "LORA" on the attention/MLP projections of Llama, Qwen2 and GPT-2,
one rank and alpha for all modules, `bias` "none", rsLoRA. Refused with a one-line
`ValueError` naming the folder and the key: DoRA, rank/alpha patterns, `modules_to_save`,
LoRA on embeddings or the output head, bias training, layer subsets, adapters whose modules,
shapes or base model name do not match the base checkpoint.

The LoRA pytree used throughout is `{module: {"A": [r, in], "B": [out, r]}}` (float32),
`module` the Hugging Face module name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INIT_INFO = "pacbayes_lora.json"
INIT_WEIGHTS = "pacbayes_lora_init.safetensors"
KEY_PREFIX = "base_model.model."

# Module names that LoRA may adapt, per family (the projections of the name table).
TARGETS = {
  "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
  "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
  "gpt2": ("c_attn", "c_proj", "c_fc"),
}
# LoraConfig keys whose non-default values this implementation does not do.
_UNSUPPORTED = {
  "use_dora": (False, None), "modules_to_save": (None, []), "layers_to_transform": (None,),
  "layers_pattern": (None, [], ""), "rank_pattern": (None, {}), "alpha_pattern": (None, {}),
  "lora_bias": (False, None), "bias": ("none", None), "megatron_config": (None,),
  "target_parameters": (None, []), "exclude_modules": (None, [], ""),
  "trainable_token_indices": (None, [], {}), "use_qalora": (False, None),
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
                use_rslora: bool = False, where: str = "--lora-targets") -> LoraLayout:
  """The adapted matrices of a model for PEFT-style `target_modules`.

  Args:
    config: the base `pacbayes.models.ModelConfig`.
    targets: module names (e.g. ["q_proj", "v_proj"]) or one regular expression.
    rank: r >= 1.
    alpha: lora_alpha > 0.
    use_rslora: rsLoRA scaling.
    where: label for error messages (a flag or a file).

  Returns:
    The `LoraLayout`.

  Raises:
    ValueError: a target outside the family's projections, one that matches nothing, or a
      rank larger than a matrix.
  """
  from pacbayes.models import param_table

  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"{where}: LoRA rank must be a positive integer, got {rank!r}")
  if not (isinstance(alpha, int | float) and alpha > 0 and math.isfinite(alpha)):
    raise ValueError(f"{where}: lora_alpha must be a positive number, got {alpha!r}")
  allowed = TARGETS[config.model_type]
  if not isinstance(targets, str):
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
      raise ValueError(f"{where}: rank {rank} exceeds min(in, out) = {min(in_f, out_f)} of "
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


# ----------------------------------------------------------------------------------------------
# Folders.


def is_adapter_folder(path: str | os.PathLike) -> bool:
  """True when `path` is a folder holding `adapter_config.json` (a PEFT adapter)."""
  return os.path.isfile(os.path.join(os.fspath(path), ADAPTER_CONFIG))


@dataclasses.dataclass(frozen=True, eq=False)
class Adapter:
  """A PEFT LoRA adapter read from a folder.

  Attributes:
    path: the folder.
    config: the parsed `adapter_config.json`.
    layout: its adapted matrices in the base architecture.
    lora: `{module: {"A": [r, in], "B": [out, r]}}` float32 NumPy arrays.
    init: the recorded initialisation (same structure) or None when unknown.
    init_info: the parsed `pacbayes_lora.json` or None.
  """

  path: str
  config: dict[str, Any]
  layout: LoraLayout
  lora: dict[str, dict[str, np.ndarray]]
  init: dict[str, dict[str, np.ndarray]] | None
  init_info: dict[str, Any] | None


def _read_json(file: Path) -> dict[str, Any]:
  try:
    obj = json.loads(file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{file}: expected a JSON object")
  return obj


def _check_adapter_config(cfg: Mapping[str, Any], file: Path) -> None:
  if cfg.get("peft_type", "LORA") != "LORA":
    raise ValueError(f"{file}: peft_type={cfg.get('peft_type')!r} is not supported (only LORA)")
  for key, ok in _UNSUPPORTED.items():
    if key in cfg and cfg[key] not in ok:
      raise ValueError(f"{file}: {key}={cfg[key]!r} is not supported (expected one of {ok})")
  for key in ("r", "lora_alpha", "target_modules"):
    if key not in cfg:
      raise ValueError(f"{file}: key {key!r} is missing")


def base_names(base_dir: str | os.PathLike) -> set[str]:
  """Names under which a base folder may be recorded: its real path, folder name, and the
  `_name_or_path` of its config.json."""
  real = os.path.realpath(os.fspath(base_dir))
  names = {real, os.path.basename(real)}
  try:
    hf = json.loads((Path(base_dir) / "config.json").read_text())
    if isinstance(hf.get("_name_or_path"), str) and hf["_name_or_path"]:
      names.add(hf["_name_or_path"])
      names.add(os.path.basename(hf["_name_or_path"].rstrip("/")))
  except (OSError, json.JSONDecodeError):
    pass
  return names


def _read_lora_tensors(file: Path, layout: LoraLayout, where: str) -> dict[str, dict[str, Any]]:
  tensors = _read_file(file)
  wanted = {}
  for m in layout.modules:
    for part, shape in (("A", (layout.rank, m.in_features)), ("B", (m.out_features, layout.rank))):
      wanted[f"{KEY_PREFIX}{m.name}.lora_{part}.weight"] = (m.name, part, shape)
  unexpected = sorted(set(tensors) - set(wanted))
  if unexpected:
    raise ValueError(f"{where}: tensor {unexpected[0]!r} does not belong to an adapted module "
                     f"of the base (expected names like {next(iter(wanted))!r})")
  out: dict[str, dict[str, Any]] = {}
  for key, (name, part, shape) in wanted.items():
    if key not in tensors:
      raise ValueError(f"{where}: tensor {key!r} is missing")
    array = np.asarray(tensors[key]).astype(np.float32)
    if array.shape != shape:
      raise ValueError(f"{where}: tensor {key!r} has shape {array.shape}, the base needs {shape}")
    out.setdefault(name, {})[part] = array
  return out


def _read_file(file: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  if not file.is_file():
    raise ValueError(f"{file}: no such file")
  try:
    return dict(load_file(str(file)))
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def read_adapter(adapter_dir: str | os.PathLike, base_config: Any,
                 base_dir: str | os.PathLike | None = None) -> Adapter:
  """Reads a PEFT LoRA adapter folder and checks it against a base architecture.

  Args:
    adapter_dir: folder with `adapter_config.json` and `adapter_model.safetensors`.
    base_config: the base's `ModelConfig`.
    base_dir: the base folder; when given and the adapter records `base_model_name_or_path`,
      that name must be one of `base_names(base_dir)`.

  Returns:
    The `Adapter`.

  Raises:
    ValueError: one line naming the folder/file and the key: unsupported options, targets
      that are not in the base, missing/extra/misshapen tensors, another base model.
  """
  folder = Path(adapter_dir)
  if not is_adapter_folder(folder):
    raise ValueError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
  file = folder / ADAPTER_CONFIG
  cfg = _read_json(file)
  _check_adapter_config(cfg, file)
  recorded = cfg.get("base_model_name_or_path")
  if base_dir is not None and recorded:
    names = base_names(base_dir)
    if recorded not in names and os.path.basename(str(recorded).rstrip("/")) not in names:
      raise ValueError(f"{file}: base_model_name_or_path={recorded!r} does not name the base "
                       f"{os.fspath(base_dir)!r}")
  try:
    layout = make_layout(base_config, cfg["target_modules"], cfg["r"], cfg["lora_alpha"],
                         use_rslora=bool(cfg.get("use_rslora", False)), where=str(file))
  except ValueError as e:
    raise ValueError(str(e)) from None
  lora = _read_lora_tensors(folder / ADAPTER_WEIGHTS, layout, str(folder / ADAPTER_WEIGHTS))
  init = info = None
  if (folder / INIT_INFO).is_file():
    info = _read_json(folder / INIT_INFO)
    init = _read_lora_tensors(folder / INIT_WEIGHTS, layout, str(folder / INIT_WEIGHTS))
  return Adapter(str(folder), cfg, layout, lora, init, info)


def adapter_config(layout: LoraLayout, targets: str | Sequence[str], base_name: str | None,
                   model_type: str) -> dict[str, Any]:
  """The `adapter_config.json` PEFT writes for a `LoraConfig` with these settings."""
  return {
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": layout.rank,
    "lora_alpha": layout.alpha, "target_modules": targets if isinstance(targets, str) else
    sorted(set(targets)), "lora_dropout": 0.0, "bias": "none",
    "fan_in_fan_out": model_type == "gpt2", "use_rslora": layout.use_rslora,
    "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    "base_model_name_or_path": base_name, "use_dora": False, "rank_pattern": {},
    "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
    "revision": None,
  }


def lora_tensors(layout: LoraLayout, lora: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """PEFT's safetensors keys for a LoRA pytree (float32 NumPy)."""
  out = {}
  for m in layout.modules:
    for part in ("A", "B"):
      out[f"{KEY_PREFIX}{m.name}.lora_{part}.weight"] = np.ascontiguousarray(
        np.asarray(jax.device_get(lora[m.name][part]), dtype=np.float32))
  return out


def write_adapter(path: str | os.PathLike, layout: LoraLayout, targets: str | Sequence[str],
                  lora: Mapping[str, Any], *, model_type: str, base_name: str | None,
                  init: Mapping[str, Any] | None = None,
                  init_info: Mapping[str, Any] | None = None) -> None:
  """Writes a PEFT adapter folder (plus the recorded initialisation when given).

  Every file is written atomically (temporary file, then rename).
  """
  from pacbayes.core.atomic import write_text
  from pacbayes.core.tensorio import write_safetensors

  os.makedirs(path, exist_ok=True)
  write_safetensors(os.path.join(path, ADAPTER_WEIGHTS), lora_tensors(layout, lora))
  if init is not None:
    write_safetensors(os.path.join(path, INIT_WEIGHTS), lora_tensors(layout, init))
    write_text(os.path.join(path, INIT_INFO), json.dumps(dict(init_info or {}), indent=2) + "\n")
  write_text(os.path.join(path, ADAPTER_CONFIG),
             json.dumps(adapter_config(layout, targets, base_name, model_type), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# What `pacbayes bound` uses.


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
              dtype: str | None = None) -> LoraCheckpoint:
  """Loads a base folder and a PEFT adapter folder; merges the adapter (weight-space view).

  Args:
    base_dir: the base Hugging Face folder (`pacbayes.models.load_pretrained`).
    adapter_dir: the PEFT adapter folder.
    dtype: parameter dtype (default the base's); the merge is done in float32 and rounded
      once to this dtype.

  Returns:
    A `LoraCheckpoint`.

  Raises:
    ValueError: see `read_adapter` and `load_pretrained`.
  """
  from flax import nnx

  from pacbayes.models import load_pretrained

  model, config = load_pretrained(base_dir, dtype=dtype)
  adapter = read_adapter(adapter_dir, config, base_dir)
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
    """loss_fn(params, batch) -> [B] bounded loss for `pacbayes.posterior.perturb` / `certify_params`.

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
