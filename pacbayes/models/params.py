"""The parameters of a checkpoint: HF-name <-> NNX-path tables, buffers, selection by HF names.

One definition serves every path that needs "the parameters of this checkpoint": the loader
(`pacbayes.models.checkpoint.load_pretrained`), the streamed KL
(`pacbayes.posterior.kl.checkpoint_kl`) and the `--include/--exclude` selection of the `bound`
command.

* `param_table(config)`: one `Entry` per Hugging Face tensor name of the architecture, with the
  NNX parameter path(s) it fills and the load/save hooks (transpose, split of GPT-2's `c_attn`).
* `classify_tensors(config, names)`: sorts the names stored in a checkpoint into parameters,
  known non-parameter buffers (ignored by name), a redundant `lm_head.weight` beside tied
  embeddings (to be checked equal, counted once), and refuses anything else by name.
* `select_parameters` / `parameter_mask`: Hugging Face glob patterns (fnmatch) -> the chosen
  HF names, or a bool pytree shaped like the NNX parameters. A pattern that matches no
  parameter is an error that names it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from pacbayes.core.tensorio import CheckpointError
from pacbayes.models.config import ModelConfig
from pacbayes.models.transformer import build_model

__all__ = [
  "TIED_HEAD",
  "Entry",
  "ParameterSet",
  "canonical_name",
  "classify_tensors",
  "embedding_name",
  "hf_name_of_path",
  "hf_names",
  "hf_shapes",
  "match_names",
  "parameter_mask",
  "param_table",
  "paths_of_hf_name",
  "select_parameters",
]

NnxPath = tuple[str | int, ...]

# The output projection's name; when embeddings are tied a stored copy is redundant.
TIED_HEAD = "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class Entry:
  """One Hugging Face tensor and the NNX parameter(s) it fills.

  Attributes:
    hf_name: the tensor's name in the safetensors files (GPT-2 with the `transformer.` prefix).
    nnx_paths: the NNX parameter paths, e.g. `("layers", 0, "attn", "q_proj", "kernel")`.
    load: HF array -> the NNX arrays, one per path.
    save: the NNX arrays -> the HF array.
  """

  hf_name: str
  nnx_paths: tuple[NnxPath, ...]
  load: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  save: Callable[..., np.ndarray]
  kind: str = "same"  # "same", "linear" (transposed) or "split3" (fused on the last axis)

  def hf_shape(self, *nnx_shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The stored shape, from the shapes of the NNX parameters (no arrays are made)."""
    if self.kind == "linear":
      return tuple(reversed(nnx_shapes[0]))
    if self.kind == "split3":
      return nnx_shapes[0][:-1] + (sum(s[-1] for s in nnx_shapes),)
    return tuple(nnx_shapes[0])


def _same(hf: str, path: NnxPath) -> Entry:
  return Entry(hf, (path,), lambda a: (a,), lambda a: a)


def _linear(hf: str, path: NnxPath) -> Entry:
  # torch.nn.Linear stores (out, in); our kernels are (in, out).
  return Entry(hf, (path,), lambda a: (a.T,), lambda a: a.T, "linear")


def _split3(hf: str, paths: tuple[NnxPath, NnxPath, NnxPath]) -> Entry:
  # GPT-2's fused c_attn: Conv1D weight (D, 3D) / bias (3D,) = [q | k | v] on the last axis.
  return Entry(hf, paths, lambda a: tuple(np.split(a, 3, axis=-1)),
               lambda q, k, v: np.concatenate([q, k, v], axis=-1), "split3")


def _llama_table(config: ModelConfig) -> list[Entry]:
  table = [_same("model.embed_tokens.weight", ("embed",)),
           _same("model.norm.weight", ("final_norm", "weight"))]
  if not config.tie_word_embeddings:
    table.append(_linear(TIED_HEAD, ("lm_head",)))
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
  # bare GPT2Model names (the original hub files) are mapped onto them by `canonical_name`.
  t = "transformer."
  table = [_same(t + "wte.weight", ("embed",)), _same(t + "wpe.weight", ("pos_embed",)),
           _same(t + "ln_f.weight", ("final_norm", "weight")),
           _same(t + "ln_f.bias", ("final_norm", "bias"))]
  if not config.tie_word_embeddings:
    table.append(_linear(TIED_HEAD, ("lm_head",)))
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


def param_table(config: ModelConfig) -> list[Entry]:
  """The HF-name -> NNX-path table of one architecture (what load, save and the KL use)."""
  return _gpt2_table(config) if config.model_type == "gpt2" else _llama_table(config)


def hf_names(config: ModelConfig) -> tuple[str, ...]:
  """The Hugging Face names of the architecture's parameters, in table order.

  With tied embeddings `lm_head.weight` is not among them (the embedding is the parameter).
  """
  return tuple(e.hf_name for e in param_table(config))


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """The stored shape of every parameter implied by the config, `{HF name: shape}`."""
  abstract = nnx.eval_shape(lambda: build_model(config, rngs=nnx.Rngs(0)))
  shapes = {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(abstract))}
  return {e.hf_name: e.hf_shape(*(shapes[p] for p in e.nnx_paths)) for e in param_table(config)}


def embedding_name(config: ModelConfig) -> str:
  """The HF name of the token embedding (the tensor a tied `lm_head.weight` duplicates)."""
  return "transformer.wte.weight" if config.model_type == "gpt2" else "model.embed_tokens.weight"


def _path_tuple(path: NnxPath | str) -> NnxPath:
  if isinstance(path, str):
    return tuple(int(p) if p.isdigit() else p for p in path.split("/") if p)
  return tuple(int(p) if isinstance(p, (int, np.integer)) else str(p) for p in path)


def hf_name_of_path(config: ModelConfig, path: NnxPath | str) -> str:
  """The HF tensor name that holds an NNX parameter.

  Args:
    config: the architecture.
    path: an NNX path as a tuple (`("layers", 0, "attn", "q_proj", "kernel")`) or joined by
      '/' (`"layers/0/attn/q_proj/kernel"`).

  Returns:
    e.g. `"model.layers.0.self_attn.q_proj.weight"`; for GPT-2's q/k/v the fused
    `"transformer.h.0.attn.c_attn.weight"`.

  Raises:
    ValueError: the path is not a parameter of this architecture.
  """
  wanted = _path_tuple(path)
  for entry in param_table(config):
    if wanted in entry.nnx_paths:
      return entry.hf_name
  raise ValueError(f"{'/'.join(map(str, wanted))!r} is not a parameter path of "
                   f"model_type={config.model_type!r}")


def paths_of_hf_name(config: ModelConfig, name: str) -> tuple[NnxPath, ...]:
  """The NNX parameter path(s) filled by an HF tensor name (three for GPT-2's `c_attn`).

  Raises:
    ValueError: the name is not a parameter of this architecture.
  """
  name = canonical_name(config, name)
  for entry in param_table(config):
    if entry.hf_name == name:
      return entry.nnx_paths
  raise ValueError(f"{name!r} is not a parameter of model_type={config.model_type!r}")


# ----------------------------------------------------------------------------------------------
# Stored names -> parameters, buffers, tied duplicate, refused.

# Non-parameter buffers that exporters write (GPT-2's causal-mask buffers; rotary inverse
# frequencies of older Llama/Qwen2 exports). They carry no weights and are ignored by name.
_BUFFERS = {
  "llama": re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
  "qwen2": re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
  "gpt2": re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)"),
}


def canonical_name(config: ModelConfig, name: str) -> str:
  """A stored tensor name in the table's form (bare GPT2Model names get `transformer.`)."""
  if config.model_type == "gpt2" and not (name.startswith("transformer.") or name == TIED_HEAD):
    return "transformer." + name
  return name


@dataclasses.dataclass(frozen=True)
class ParameterSet:
  """How the tensors stored in a checkpoint map onto the architecture's parameters.

  Attributes:
    parameters: `{table HF name: stored name}` for every parameter, in table order (the stored
      name differs only for bare GPT2Model files).
    buffers: stored names of known non-parameter buffers, ignored.
    tied_duplicate: the stored name of a redundant `lm_head.weight` beside tied embeddings
      (the caller checks it equals the embedding; it is counted once), or None.
  """

  parameters: dict[str, str]
  buffers: tuple[str, ...]
  tied_duplicate: str | None


def classify_tensors(config: ModelConfig, names: Iterable[str], where: str) -> ParameterSet:
  """Sorts the tensor names stored in a checkpoint; refuses unknown and missing ones.

  Args:
    config: the checkpoint's architecture.
    names: the tensor names in its safetensors files.
    where: the folder, for error messages.

  Returns:
    A `ParameterSet`.

  Raises:
    CheckpointError: (a ValueError) naming the folder and tensor, for a tensor that is
      neither a parameter nor a known buffer (nor a tied duplicate), a parameter stored twice
      (bare and prefixed GPT-2 names), or a missing parameter.
  """
  table = hf_names(config)
  expected = set(table)
  buffer = _BUFFERS[config.model_type]
  stored: dict[str, str] = {}
  buffers, unknown, tied = [], [], None
  for name in names:
    full = canonical_name(config, name)
    if full in expected:
      if full in stored:
        raise CheckpointError(f"{where}: parameter {full!r} is stored twice (as {stored[full]!r} "
                         f"and {name!r})")
      stored[full] = name
    elif buffer.fullmatch(full):
      buffers.append(name)
    elif full == TIED_HEAD and config.tie_word_embeddings:
      tied = name
    else:
      unknown.append(name)
  if unknown:
    raise CheckpointError(f"{where}: tensor {unknown[0]!r} is not a parameter of "
                     f"model_type={config.model_type!r} (nor a known buffer); all unknown: "
                     f"{unknown[:10]}")
  missing = [n for n in table if n not in stored]
  if missing:
    raise CheckpointError(f"{where}: parameter {missing[0]!r} is missing from the checkpoint; all "
                     f"missing: {missing[:10]}")
  return ParameterSet({n: stored[n] for n in table}, tuple(buffers), tied)


# ----------------------------------------------------------------------------------------------
# Selection by Hugging Face glob patterns.


def _as_patterns(patterns: str | Sequence[str] | None, what: str) -> tuple[str, ...] | None:
  if patterns is None:
    return None
  if isinstance(patterns, str):
    patterns = (patterns,)
  patterns = tuple(patterns)
  if not all(isinstance(p, str) and p for p in patterns):
    raise ValueError(f"{what}: expected glob pattern strings, got {patterns!r}")
  return patterns


def match_names(names: Sequence[str], include: str | Sequence[str] | None = None,
                exclude: str | Sequence[str] | None = None, *,
                hint: str | None = None) -> tuple[str, ...]:
  """The names kept by fnmatch glob patterns: those matching some `include` pattern (all names
  when None) and no `exclude` pattern, in the order of `names`.

  Args:
    names: candidate names.
    include: pattern or patterns to keep.
    exclude: pattern or patterns to drop.
    hint: extra text for the error when a pattern matches nothing.

  Raises:
    ValueError: naming the flag and pattern, for a pattern (include or exclude) that matches
      none of `names`, or when nothing is kept.
  """
  inc = _as_patterns(include, "include")
  exc = _as_patterns(exclude, "exclude")
  for flag, pats in (("include", inc), ("exclude", exc)):
    for pat in pats or ():
      if not any(fnmatch.fnmatchcase(n, pat) for n in names):
        raise ValueError(f"{flag}: pattern {pat!r} matches no parameter{hint or ''}; names look "
                         f"like {list(names[:3])}")
  kept = tuple(n for n in names
               if (inc is None or any(fnmatch.fnmatchcase(n, p) for p in inc))
               and not (exc and any(fnmatch.fnmatchcase(n, p) for p in exc)))
  if not kept:
    raise ValueError(f"include={include!r}, exclude={exclude!r}: no parameter is left to perturb")
  return kept


def _tied_hint(config: ModelConfig) -> str:
  if config.tie_word_embeddings:
    return (f" ({TIED_HEAD!r} is tied to {embedding_name(config)!r} in this model: select the "
            "embedding)")
  return ""


def select_parameters(config: ModelConfig, include: str | Sequence[str] | None = None,
                      exclude: str | Sequence[str] | None = None) -> tuple[str, ...]:
  """The HF names of the parameters selected by glob patterns on Hugging Face names.

  Patterns are `fnmatch` globs (`*` also matches `.`), e.g. `"model.layers.*.mlp.*"` or
  `"*norm*"`; GPT-2 names carry the `transformer.` prefix (`"transformer.wte.weight"`).

  Args:
    config: the architecture.
    include: pattern(s) of parameters to keep (None: all).
    exclude: pattern(s) of parameters to drop.

  Returns:
    The selected HF names, in table order.

  Raises:
    ValueError: a pattern that matches no parameter of this architecture (naming the flag and
      the pattern), or an empty selection.
  """
  return match_names(hf_names(config), include, exclude, hint=_tied_hint(config))


def _leaf_path(path: tuple[Any, ...]) -> NnxPath:
  out: list[str | int] = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      out.append(entry.key if isinstance(entry.key, int) else str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      out.append(entry.idx)
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      if entry.name != "value":  # nnx.Variable leaves end in `.value`
        out.append(entry.name)
    else:
      out.append(str(getattr(entry, "key", entry)))
  return tuple(out)


def parameter_mask(config: ModelConfig, params: Any, include: str | Sequence[str] | None = None,
                   exclude: str | Sequence[str] | None = None) -> Any:
  """A bool pytree shaped like `params`: True on the leaves of the selected HF parameters.

  Args:
    config: the architecture.
    params: the model's parameters, e.g. the `nnx.State` of `nnx.split(model, nnx.Param, ...)`.
    include, exclude: HF-name glob patterns, as in `select_parameters`.

  Returns:
    A pytree with the structure of `params` and Python bool leaves (GPT-2's q/k/v leaves all
    follow the fused `c_attn` name).

  Raises:
    ValueError: as `select_parameters`, or a leaf of `params` that is not a parameter of the
      architecture.
  """
  chosen = set(select_parameters(config, include, exclude))
  path_to_name = {p: e.hf_name for e in param_table(config) for p in e.nnx_paths}
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  keep = []
  for path, _ in flat:
    nnx_path = _leaf_path(path)
    if nnx_path not in path_to_name:
      raise ValueError(f"params: leaf {'/'.join(map(str, nnx_path))!r} is not a parameter of "
                       f"model_type={config.model_type!r}")
    keep.append(path_to_name[nnx_path] in chosen)
  return jax.tree_util.tree_unflatten(treedef, keep)
