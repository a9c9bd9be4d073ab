"""PEFT adapter folders: read (strictly, checked against the base by content), write.

Folder format (what `peft` writes and reads): `adapter_config.json` (a `LoraConfig`) and
`adapter_model.safetensors` with tensors `base_model.model.<module>.lora_A.weight` ([r, in])
and `...lora_B.weight` ([out, r]), `<module>` the Hugging Face module name, e.g.
`model.layers.0.self_attn.q_proj` or `transformer.h.0.attn.c_attn`. Adapters written by
`pacbayes finetune` add `pacbayes_lora.json` (seed, initialisation rule, and the base's
content fingerprint) and `pacbayes_lora_init.safetensors` (the initial A and B, same key
names): the data-independent initialisation that the LoRA-space prior is centred on.

Which base an adapter belongs to: an adapter written by `pacbayes finetune` records the
base's content fingerprint (`pacbayes.models.checkpoint.folder_fingerprint`: config and
weight files); reading it against a base compares fingerprints, so a renamed or moved
byte-identical base is accepted and another base under the same folder name is refused.
An adapter written by another tool records only `base_model_name_or_path`; then the base
folder's name must match it, or the caller states the base explicitly (`accept_base`,
the `--accept-base` flag of `pacbayes bound`) and the adapter remembers that it was only
stated (`Adapter.base_check`).

Supported: `peft_type` "LORA" on the attention/MLP projections of Llama, Qwen2 and GPT-2,
one rank and alpha for all modules, `bias` "none", rsLoRA. Refused with a one-line
`ValueError` naming the folder and the key: DoRA, rank/alpha patterns, `modules_to_save`,
LoRA on embeddings or the output head, bias training, layer subsets, a value of the wrong
JSON type (`"use_rslora": "false"`), adapters whose modules, shapes or base do not match.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pacbayes.core.jsonio import JSONError, field, read_object
from pacbayes.lora.layout import LoraLayout, make_layout

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
INIT_INFO = "pacbayes_lora.json"
INIT_WEIGHTS = "pacbayes_lora_init.safetensors"
KEY_PREFIX = "base_model.model."
BASE_FINGERPRINT = "base_fingerprint"  # key of INIT_INFO

# LoraConfig keys whose non-default values this implementation does not do.
_UNSUPPORTED = {
  "use_dora": (False, None), "modules_to_save": (None, []), "layers_to_transform": (None,),
  "layers_pattern": (None, [], ""), "rank_pattern": (None, {}), "alpha_pattern": (None, {}),
  "lora_bias": (False, None), "bias": ("none", None), "megatron_config": (None,),
  "target_parameters": (None, []), "exclude_modules": (None, [], ""),
  "trainable_token_indices": (None, [], {}), "use_qalora": (False, None),
}


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
    base_check: how the base was matched: "fingerprint" (content), "name" (only the
      recorded name; the adapter has no fingerprint), "stated" (neither; the caller said it
      is the base: `accept_base`), or "none" (no base folder given, or no name recorded).
  """

  path: str
  config: dict[str, Any]
  layout: LoraLayout
  lora: dict[str, dict[str, np.ndarray]]
  init: dict[str, dict[str, np.ndarray]] | None
  init_info: dict[str, Any] | None
  base_check: str = "none"


def _same(value: Any, allowed: tuple) -> bool:
  # `0 in (False, None)` is True in Python; JSON types must match too.
  return any(type(value) is type(a) and value == a for a in allowed)


def check_adapter_config(cfg: Mapping[str, Any], where: str) -> None:
  """Checks the keys of an `adapter_config.json` this module reads (types and values).

  Raises:
    ValueError: one line naming `where` and the key.
  """
  peft_type = field(cfg, "peft_type", "str", where=where, default="LORA")
  if peft_type != "LORA":
    raise ValueError(f"{where}: peft_type={peft_type!r} is not supported (only LORA)")
  for key, ok in _UNSUPPORTED.items():
    if key in cfg and not _same(cfg[key], ok):
      raise ValueError(f"{where}: {key}={cfg[key]!r} is not supported (expected one of {ok})")
  field(cfg, "r", "int", where=where)
  field(cfg, "lora_alpha", "number", where=where)
  field(cfg, "use_rslora", "bool", where=where, default=False)
  field(cfg, "fan_in_fan_out", "bool", where=where, default=False)
  field(cfg, "base_model_name_or_path", "str", where=where, default=None, nullable=True)
  if not isinstance(cfg.get("target_modules"), str):  # a regex string is checked by make_layout
    field(cfg, "target_modules", "str_list", where=where)


def base_names(base_dir: str | os.PathLike) -> set[str]:
  """Names under which a base folder may be recorded: its real path, folder name, and the
  `_name_or_path` of its config.json."""
  real = os.path.realpath(os.fspath(base_dir))
  names = {real, os.path.basename(real)}
  try:
    hf = read_object(Path(base_dir) / "config.json")
  except JSONError:
    return names  # the base's own reader names the file
  if isinstance(hf.get("_name_or_path"), str) and hf["_name_or_path"]:
    names.add(hf["_name_or_path"])
    names.add(os.path.basename(hf["_name_or_path"].rstrip("/")))
  return names


def _read_file(file: Path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  if not file.is_file():
    raise ValueError(f"{file}: no such file")
  try:
    return dict(load_file(str(file)))
  except Exception as e:  # safetensors raises its own error types
    raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


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
    raw = np.asarray(tensors[key])
    if raw.dtype.kind not in "fV":  # V: bfloat16 as safetensors.numpy returns it
      raise ValueError(f"{where}: tensor {key!r} has dtype {raw.dtype}; expected floats")
    array = raw.astype(np.float32)
    if array.shape != shape:
      raise ValueError(f"{where}: tensor {key!r} has shape {array.shape}, the base needs {shape}")
    if not np.all(np.isfinite(array)):
      bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
      raise ValueError(f"{where}: tensor {key!r} holds {bad} non-finite value(s) (NaN or "
                       "infinite)")
    out.setdefault(name, {})[part] = array
  return out


def check_base(adapter_dir: str | os.PathLike, recorded_name: str | None,
               info: Mapping[str, Any] | None, base_dir: str | os.PathLike, *,
               accept_base: bool = False) -> str:
  """Checks that `base_dir` is the base an adapter was trained on; returns how (see `Adapter`).

  Args:
    adapter_dir: the adapter folder (for messages).
    recorded_name: its `base_model_name_or_path`.
    info: its parsed `pacbayes_lora.json` (None when absent).
    base_dir: the base folder given.
    accept_base: for an adapter without a fingerprint, accept a base whose name does not
      match (the caller states it is the right one).

  Raises:
    ValueError: a fingerprint that differs from the base's (another base), or, without a
      fingerprint, a name that does not match and `accept_base` is false.
  """
  from pacbayes.models.checkpoint import folder_fingerprint

  where = os.path.join(os.fspath(adapter_dir), INIT_INFO)
  recorded = None if info is None else field(info, BASE_FINGERPRINT, "str", where=where,
                                             default=None)
  if recorded is not None:
    actual = folder_fingerprint(base_dir)
    if actual != recorded:
      raise ValueError(
        f"{os.fspath(adapter_dir)}: was trained on another base: the base it records "
        f"({recorded_name or 'unnamed'}) has fingerprint {recorded[:19]}..., the base "
        f"{os.fspath(base_dir)} has {actual[:19]}... (other config or weights)")
    return "fingerprint"
  if not recorded_name:
    return "stated" if accept_base else "none"
  names = base_names(base_dir)
  if recorded_name in names or os.path.basename(str(recorded_name).rstrip("/")) in names:
    return "name"
  if accept_base:
    return "stated"
  raise ValueError(
    f"{os.path.join(os.fspath(adapter_dir), ADAPTER_CONFIG)}: base_model_name_or_path="
    f"{recorded_name!r} does not name the base {os.fspath(base_dir)!r}, and the adapter "
    "records no content fingerprint (not written by pacbayes finetune); if this is the base "
    "it was trained on, say so with --accept-base")


def read_adapter(adapter_dir: str | os.PathLike, base_config: Any,
                 base_dir: str | os.PathLike | None = None, *,
                 accept_base: bool = False) -> Adapter:
  """Reads a PEFT LoRA adapter folder and checks it against a base architecture.

  Args:
    adapter_dir: folder with `adapter_config.json` and `adapter_model.safetensors`.
    base_config: the base's `ModelConfig`.
    base_dir: the base folder; when given it must be the adapter's base (`check_base`: by
      content fingerprint when the adapter records one, else by name).
    accept_base: accept a base whose name does not match, for adapters without a
      fingerprint (see `check_base`).

  Returns:
    The `Adapter`.

  Raises:
    ValueError: one line naming the folder/file and the key: unsupported options, values of
      the wrong type, targets that are not in the base, missing/extra/misshapen/non-finite
      tensors, another base.
  """
  folder = Path(adapter_dir)
  if not is_adapter_folder(folder):
    raise ValueError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG})")
  file = folder / ADAPTER_CONFIG
  cfg = read_object(file)
  check_adapter_config(cfg, str(file))
  info = read_object(folder / INIT_INFO) if (folder / INIT_INFO).is_file() else None
  check = "none"
  if base_dir is not None:
    check = check_base(folder, cfg.get("base_model_name_or_path"), info, base_dir,
                       accept_base=accept_base)
  try:
    layout = make_layout(base_config, cfg["target_modules"], cfg["r"], cfg["lora_alpha"],
                         use_rslora=cfg.get("use_rslora", False), where=str(file))
  except ValueError as e:
    raise ValueError(str(e)) from None
  lora = _read_lora_tensors(folder / ADAPTER_WEIGHTS, layout, str(folder / ADAPTER_WEIGHTS))
  init = None
  if info is not None:
    init = _read_lora_tensors(folder / INIT_WEIGHTS, layout, str(folder / INIT_WEIGHTS))
  return Adapter(str(folder), cfg, layout, lora, init, info, check)


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

  Every file is written atomically (temporary file, then rename); the trained tensors must be
  finite.

  Raises:
    ValueError: a non-finite trained or initial value (nothing is written then).
  """
  from pacbayes.core.atomic import write_text
  from pacbayes.core.tensorio import write_safetensors

  tensors = lora_tensors(layout, lora)
  init_tensors = lora_tensors(layout, init) if init is not None else None
  for name, array in {**tensors, **(init_tensors or {})}.items():
    if not np.all(np.isfinite(array)):
      raise ValueError(f"{os.fspath(path)}: tensor {name!r} is not finite; not written")
  os.makedirs(path, exist_ok=True)
  write_safetensors(os.path.join(path, ADAPTER_WEIGHTS), tensors)
  if init_tensors is not None:
    write_safetensors(os.path.join(path, INIT_WEIGHTS), init_tensors)
    write_text(os.path.join(path, INIT_INFO), json.dumps(dict(init_info or {}), indent=2) + "\n")
  write_text(os.path.join(path, ADAPTER_CONFIG),
             json.dumps(adapter_config(layout, targets, base_name, model_type), indent=2) + "\n")
