"""Hugging Face checkpoint folders (config.json + safetensors) <-> NNX decoders, table-driven."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from pacbayes.models.config import ModelConfig
from pacbayes.models.transformer import Decoder, build_model
from pacbayes.tensorio import (
  CONFIG_FILE,
  checkpoint_folder,
  iter_tensors,
  read_tensors,
  weight_files,
  write_safetensors,
  write_tensors,
)

# Reading and writing the safetensors files themselves lives in pacbayes.tensorio; these
# names stay importable from here.
__all__ = [
  "Entry",
  "iter_tensors",
  "load_config",
  "load_pretrained",
  "param_table",
  "read_tensors",
  "save_pretrained",
  "weight_files",
  "write_safetensors",
]

NnxPath = tuple[str | int, ...]


def load_config(path: str | os.PathLike, *, dtype: str | None = None) -> ModelConfig:
  """Reads and checks `config.json` of a checkpoint folder."""
  file = checkpoint_folder(path, require_config=True) / CONFIG_FILE
  try:
    hf = json.loads(file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from e
  try:
    return ModelConfig.from_hf_config(hf, dtype=dtype)
  except ValueError as e:
    raise ValueError(f"{file}: {e}") from e


# ----------------------------------------------------------------------------------------------
# The name tables. Each entry maps one HF tensor to one or more NNX parameters; `load` turns
# the HF array into the NNX arrays and `save` does the inverse.


@dataclasses.dataclass(frozen=True)
class Entry:
  hf_name: str
  nnx_paths: tuple[NnxPath, ...]
  load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  save: Callable[..., np.ndarray]


def _same(hf: str, path: NnxPath) -> Entry:
  return Entry(hf, (path,), lambda a: (a,), lambda a: a)


def _linear(hf: str, path: NnxPath) -> Entry:
  # torch.nn.Linear stores (out, in); our kernels are (in, out).
  return Entry(hf, (path,), lambda a: (a.T,), lambda a: a.T)


def _split3(hf: str, paths: tuple[NnxPath, NnxPath, NnxPath]) -> Entry:
  # GPT-2's fused c_attn: Conv1D weight (D, 3D) / bias (3D,) = [q | k | v] on the last axis.
  return Entry(hf, paths, lambda a: tuple(np.split(a, 3, axis=-1)),
               lambda q, k, v: np.concatenate([q, k, v], axis=-1))


def _llama_table(config: ModelConfig) -> list[Entry]:
  table = [_same("model.embed_tokens.weight", ("embed",)),
           _same("model.norm.weight", ("final_norm", "weight"))]
  if not config.tie_word_embeddings:
    table.append(_linear("lm_head.weight", ("lm_head",)))
  for i in range(config.num_hidden_layers):
    hf, nn = f"model.layers.{i}.", ("layers", i)
    table += [_same(hf + "input_layernorm.weight", nn + ("input_norm", "weight")),
              _same(hf + "post_attention_layernorm.weight", nn + ("post_attn_norm", "weight"))]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
      table.append(_linear(hf + f"self_attn.{proj}.weight", nn + ("attn", proj, "kernel")))
      if config.attention_out_bias if proj == "o_proj" else config.attention_bias:
        table.append(_same(hf + f"self_attn.{proj}.bias", nn + ("attn", proj, "bias")))
    for proj in ("gate_proj", "up_proj", "down_proj"):
      table.append(_linear(hf + f"mlp.{proj}.weight", nn + ("mlp", proj, "kernel")))
      if config.mlp_bias:
        table.append(_same(hf + f"mlp.{proj}.bias", nn + ("mlp", proj, "bias")))
  return table


def _gpt2_table(config: ModelConfig) -> list[Entry]:
  # Conv1D weights are already (in, out). Names carry GPT2LMHeadModel's "transformer." prefix;
  # bare GPT2Model names (the original hub files) are accepted on load.
  t = "transformer."
  table = [_same(t + "wte.weight", ("embed",)), _same(t + "wpe.weight", ("pos_embed",)),
           _same(t + "ln_f.weight", ("final_norm", "weight")),
           _same(t + "ln_f.bias", ("final_norm", "bias"))]
  if not config.tie_word_embeddings:
    table.append(_linear("lm_head.weight", ("lm_head",)))
  for i in range(config.num_hidden_layers):
    hf, nn = f"{t}h.{i}.", ("layers", i)
    attn = nn + ("attn",)
    table += [
      _same(hf + "ln_1.weight", nn + ("input_norm", "weight")),
      _same(hf + "ln_1.bias", nn + ("input_norm", "bias")),
      _split3(hf + "attn.c_attn.weight", tuple(attn + (p, "kernel") for p in
                                                ("q_proj", "k_proj", "v_proj"))),
      _split3(hf + "attn.c_attn.bias", tuple(attn + (p, "bias") for p in
                                              ("q_proj", "k_proj", "v_proj"))),
      _same(hf + "attn.c_proj.weight", attn + ("o_proj", "kernel")),
      _same(hf + "attn.c_proj.bias", attn + ("o_proj", "bias")),
      _same(hf + "ln_2.weight", nn + ("post_attn_norm", "weight")),
      _same(hf + "ln_2.bias", nn + ("post_attn_norm", "bias")),
      _same(hf + "mlp.c_fc.weight", nn + ("mlp", "up_proj", "kernel")),
      _same(hf + "mlp.c_fc.bias", nn + ("mlp", "up_proj", "bias")),
      _same(hf + "mlp.c_proj.weight", nn + ("mlp", "down_proj", "kernel")),
      _same(hf + "mlp.c_proj.bias", nn + ("mlp", "down_proj", "bias")),
    ]
  return table


# Non-parameter buffers that some exporters write; they carry no weights and are skipped.
_SKIPPED = {
  "llama": re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
  "qwen2": re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
  "gpt2": re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)"),
}


def param_table(config: ModelConfig) -> list[Entry]:
  """The HF-name -> NNX-path table of one architecture (what load and save use)."""
  return _gpt2_table(config) if config.model_type == "gpt2" else _llama_table(config)


def _normalise_names(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  if config.model_type != "gpt2":
    return tensors
  out = {}
  for name, array in tensors.items():
    full = name if name.startswith("transformer.") or name == "lm_head.weight" else (
      "transformer." + name)
    out[full] = array
  return out


def _model_dtype(config: ModelConfig):
  return np.dtype(ml_dtypes.bfloat16) if config.dtype == "bfloat16" else np.dtype(np.float32)


def load_pretrained(path: str | os.PathLike, *,
                    dtype: str | None = None) -> tuple[Decoder, ModelConfig]:
  """Loads a Hugging Face checkpoint folder into an NNX decoder, without network access.

  Args:
    path: folder with `config.json` and `model.safetensors` (or shards listed in
      `model.safetensors.index.json`).
    dtype: "float32" or "bfloat16" for parameters and activations; None takes bfloat16 when
      `config.json` says so and float32 otherwise.

  Returns:
    (model, config).

  Raises:
    ValueError: naming the folder, file or tensor: missing folder/config/weights/shard,
      unsupported config attribute, missing or unexpected tensor, shape mismatch.
  """
  config = load_config(path, dtype=dtype)
  tensors = _normalise_names(config, read_tensors(path))
  table = param_table(config)
  expected = {e.hf_name for e in table}
  skip = _SKIPPED[config.model_type]
  if config.tie_word_embeddings and "lm_head.weight" in tensors:
    embed_name = table[0].hf_name
    if embed_name in tensors and not np.array_equal(
        np.asarray(tensors["lm_head.weight"]), np.asarray(tensors[embed_name])):
      raise ValueError(f"{path}: tie_word_embeddings is true but 'lm_head.weight' differs from "
                       f"{embed_name!r}")
    expected.add("lm_head.weight")  # a redundant copy of the tied embedding
  unexpected = sorted(n for n in tensors if n not in expected and not skip.fullmatch(n))
  if unexpected:
    raise ValueError(f"{path}: unexpected tensor {unexpected[0]!r} in the checkpoint (not used "
                     f"by model_type={config.model_type!r}); all unexpected: {unexpected[:10]}")
  missing = [e.hf_name for e in table if e.hf_name not in tensors]
  if missing:
    raise ValueError(f"{path}: tensor {missing[0]!r} is missing from the checkpoint; all "
                     f"missing: {missing[:10]}")

  abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  slots = dict(nnx.to_flat_state(abstract_state))
  dtype_np = _model_dtype(config)
  filled: dict[NnxPath, Any] = {}
  for entry in table:
    array = tensors[entry.hf_name]
    try:
      parts = entry.load(array)
    except ValueError as e:
      raise ValueError(f"{path}: tensor {entry.hf_name!r} with shape {array.shape} cannot be "
                       f"mapped ({e})") from e
    for nnx_path, part in zip(entry.nnx_paths, parts, strict=True):
      slot = slots[nnx_path]
      if tuple(part.shape) != tuple(slot.shape):
        raise ValueError(
          f"{path}: tensor {entry.hf_name!r} has shape {tuple(array.shape)}, which does not "
          f"match the config (expected {tuple(slot.shape)} for {'/'.join(map(str, nnx_path))})")
      filled[nnx_path] = slot.replace(value=jnp.asarray(np.asarray(part).astype(dtype_np)))
  unfilled = [p for p in slots if p not in filled]
  if unfilled:  # a table bug, not a user error
    raise RuntimeError(f"parameters not covered by the load table: {unfilled}")
  state = nnx.from_flat_state([(p, filled[p]) for p in slots])
  return nnx.merge(graphdef, state), config


def _tensors_to_save(model: Decoder, config: ModelConfig) -> dict[str, np.ndarray]:
  _, state = nnx.split(model)
  flat = {p: v for p, v in nnx.to_flat_state(state)}
  out = {}
  for entry in param_table(config):
    parts = []
    for nnx_path in entry.nnx_paths:
      if nnx_path not in flat:
        raise ValueError(f"model has no parameter {'/'.join(map(str, nnx_path))} that config "
                         f"(model_type={config.model_type!r}) requires")
      parts.append(np.asarray(jax.device_get(flat[nnx_path][...])))
    out[entry.hf_name] = np.ascontiguousarray(entry.save(*parts))
  return out


def save_pretrained(model: Decoder, config: ModelConfig, path: str | os.PathLike, *,
                    max_shard_bytes: int | None = None) -> None:
  """Writes `config.json` and safetensors weights that transformers (torch) loads back.

  Args:
    model: the decoder.
    config: its config.
    path: output folder (created; existing files of the same names are overwritten).
    max_shard_bytes: if given, split the weights into `model-0000i-of-0000n.safetensors`
      files of at most about this many bytes plus `model.safetensors.index.json`.
  """
  tensors = _tensors_to_save(model, config)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    f.write(json.dumps(config.to_hf_config(), indent=2) + "\n")
  write_tensors(path, tensors, max_shard_bytes=max_shard_bytes)
