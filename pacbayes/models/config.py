"""Decoder configuration: one frozen dataclass for Llama, Qwen2 and GPT-2, and HF config I/O."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

MODEL_TYPES = ("llama", "qwen2", "gpt2")
DTYPES = ("float32", "bfloat16")

# Activations each family implements (the MLP of llama/qwen2 is gated, GPT-2's is not).
_ACTIVATIONS = {"llama": ("silu",), "qwen2": ("silu",), "gpt2": ("gelu_new",)}

# HF config keys that carry no architecture (metadata, training-only knobs, generation
# defaults): accepted and dropped. Anything outside these and the keys a family reads is
# rejected, so that a checkpoint whose config asks for an unimplemented feature never loads
# silently into the wrong function.
_IGNORED_KEYS = frozenset({
  "_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype",
  "output_hidden_states", "output_attentions", "return_dict", "use_cache",
  "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
  "initializer_range", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
  "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
  "summary_first_dropout", "task_specific_params", "tokenizer_class", "prefix",
  "finetuning_task", "decoder_start_token_id", "sep_token_id", "model_type",
  "tie_encoder_decoder", "is_decoder", "add_cross_attention", "cross_attention_hidden_size",
  "pruned_heads", "torchscript", "tf_legacy_loss", "use_bfloat16", "max_length", "min_length",
  "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
  "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
  "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
  "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
  "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
  "suppress_tokens", "begin_suppress_tokens", "n_ctx", "pretraining_tp", "use_mrope",
  "max_window_layers", "gradient_checkpointing", "bos_token_id", "eos_token_id",
  "pad_token_id", "layer_norm_eps", "is_llama_config", "_num_labels",
  # Names, paths and provenance written by converters and hubs.
  "model_name", "name_or_path", "base_model", "base_model_name_or_path", "license",
  "language", "tags", "library_name", "commit_hash", "output_router_logits",
  "transformers.js_config",
})


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """Llama 3 frequency-dependent rotary scaling (HF rope_type "llama3")."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int

  def __post_init__(self):
    if not (self.factor > 0 and self.high_freq_factor > self.low_freq_factor > 0
            and self.original_max_position_embeddings > 0):
      raise ValueError(f"rope_scaling={self}: expected factor > 0, high_freq_factor > "
                       "low_freq_factor > 0 and original_max_position_embeddings > 0")

  def to_hf(self) -> dict[str, Any]:
    return {"rope_type": "llama3", **dataclasses.asdict(self)}


def _reject(key: str, value: Any, expected: str) -> ValueError:
  return ValueError(f"config attribute {key!r}={value!r} is not supported: expected {expected}")


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Type checks of config values: kind -> (test, description for messages).
_KINDS = {
  "int": (_is_int, "an integer"),
  "int|null": (lambda v: v is None or _is_int(v), "an integer or null"),
  "number": (_is_number, "a finite number"),
  "bool": (lambda v: isinstance(v, bool), "true or false"),
  "str": (lambda v: isinstance(v, str), "a string"),
  "str-list|null": (lambda v: v is None or (isinstance(v, list)
                                             and all(isinstance(t, str) for t in v)),
                    "a list of strings or null"),
  "ids|null": (lambda v: v is None or _is_int(v) or (isinstance(v, (list, tuple)) and v
                                                      and all(_is_int(t) for t in v)),
               "an integer, a list of integers or null"),
}
_MISSING = object()


def _get(hf: Mapping[str, Any], key: str, kind: str, default: Any = _MISSING, *,
         parent: str = "") -> Any:
  """hf[key] checked against `kind` (see _KINDS); `default` when absent (required if none).

  `parent` names the enclosing attribute in messages (e.g. "rope_parameters.").
  """
  if key not in hf:
    if default is _MISSING:
      raise ValueError(f"config attribute {parent + key!r} is missing")
    return default
  value = hf[key]
  test, expected = _KINDS[kind]
  if not test(value):
    raise ValueError(f"config attribute {parent + key!r}={value!r}: expected {expected}, got "
                     f"{type(value).__name__}")
  return value


def _is_metadata(key: str) -> bool:
  """Keys that never change the function: private/bookkeeping names and special token ids."""
  return (key in _IGNORED_KEYS or key.startswith("_") or key.endswith("_token_id")
          or key.endswith("_token_ids"))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer (Llama, Qwen2 or GPT-2 family).

  Attributes:
    model_type: "llama", "qwen2" (Llama plus q/k/v bias) or "gpt2".
    vocab_size: number of token ids.
    hidden_size: residual width D.
    intermediate_size: MLP width F.
    num_hidden_layers: number of decoder blocks.
    num_attention_heads: query heads H.
    num_key_value_heads: key/value heads K (grouped-query attention when K < H).
    head_dim: per-head width; None means hidden_size // num_attention_heads.
    max_position_embeddings: longest sequence (the size of GPT-2's position table).
    rope_theta: rotary base (llama/qwen2).
    rope_scaling: None, or Llama 3 rotary scaling (llama only).
    norm_eps: epsilon of RMSNorm (llama/qwen2) or LayerNorm (gpt2).
    tie_word_embeddings: the output projection reuses the input embedding.
    attention_bias: q/k/v projections have a bias.
    attention_out_bias: the attention output projection has a bias.
    mlp_bias: MLP projections have biases.
    hidden_act: "silu" (gated MLP, llama/qwen2) or "gelu_new" (gpt2).
    dtype: "float32" or "bfloat16": parameter and activation dtype (norms, softmax and logits
      are computed in float32 whatever this is).
    initializer_range: standard deviation of the random initialisation.
    bos_token_id, eos_token_id, pad_token_id: special ids kept for saving (eos may be a tuple).
  """

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  max_position_embeddings: int = 2048
  rope_theta: float = 10000.0
  rope_scaling: Llama3RopeScaling | None = None
  norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  hidden_act: str | None = None
  dtype: str = "float32"
  initializer_range: float = 0.02
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"model_type={self.model_type!r}: expected one of {MODEL_TYPES}")
    for name, kind in _FIELD_KINDS.items():
      test, expected = _KINDS[kind]
      value = getattr(self, name)
      if not test(value):
        raise ValueError(f"{name}={value!r}: expected {expected}, got {type(value).__name__}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "max_position_embeddings"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
        f"num_key_value_heads={self.num_key_value_heads}: expected a positive divisor of "
        f"num_attention_heads={self.num_attention_heads}")
    if self.head_dim is None:
      if self.hidden_size % self.num_attention_heads:
        raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                         f"num_attention_heads={self.num_attention_heads}; give head_dim")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.head_dim <= 0 or (self.model_type != "gpt2" and self.head_dim % 2):
      raise ValueError(f"head_dim={self.head_dim}: expected a positive (even for rotary) integer")
    if self.hidden_act is None:
      object.__setattr__(self, "hidden_act", _ACTIVATIONS[self.model_type][0])
    if self.hidden_act not in _ACTIVATIONS[self.model_type]:
      raise ValueError(f"hidden_act={self.hidden_act!r}: expected one of "
                       f"{_ACTIVATIONS[self.model_type]} for model_type={self.model_type!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype={self.dtype!r}: expected one of {DTYPES}")
    if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
      raise ValueError(f"rope_theta={self.rope_theta!r}: expected a positive number")
    if not self.norm_eps > 0:
      raise ValueError(f"norm_eps={self.norm_eps!r}: expected a positive number")
    if self.rope_scaling is not None and self.model_type != "llama":
      raise ValueError(f"rope_scaling is only implemented for llama, not {self.model_type!r}")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.model_type == "gpt2":
      if self.num_key_value_heads != self.num_attention_heads:
        raise ValueError("gpt2 has no grouped-query attention: num_key_value_heads="
                         f"{self.num_key_value_heads} != num_attention_heads="
                         f"{self.num_attention_heads}")
      if self.head_dim * self.num_attention_heads != self.hidden_size:
        raise ValueError(f"gpt2 needs head_dim * num_attention_heads == hidden_size, got "
                         f"{self.head_dim} * {self.num_attention_heads} != {self.hidden_size}")
      if not (self.attention_bias and self.attention_out_bias and self.mlp_bias):
        raise ValueError("gpt2 always has attention and MLP biases: set attention_bias, "
                         "attention_out_bias and mlp_bias to True")
    if self.model_type == "qwen2" and not self.attention_bias:
      raise ValueError("qwen2 has q/k/v biases: attention_bias must be True")
    if self.model_type == "qwen2" and (self.attention_out_bias or self.mlp_bias):
      raise ValueError("qwen2 has no output-projection or MLP bias: attention_out_bias and "
                       "mlp_bias must be False")

  @property
  def num_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_attention_heads // self.num_key_value_heads

  def replace(self, **changes) -> ModelConfig:
    """Returns a copy with `changes` applied (and checked)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_config(cls, hf: Mapping[str, Any], *, dtype: str | None = None) -> ModelConfig:
    """Builds a config from a Hugging Face `config.json` dictionary.

    Args:
      hf: the parsed `config.json`.
      dtype: "float32" or "bfloat16"; None takes bfloat16 when the checkpoint says so and
        float32 otherwise.

    Returns:
      The config.

    Raises:
      ValueError: naming the attribute, for an unknown model_type or any attribute asking for
        something this implementation does not do (rope scaling, sliding windows, other
        activations, quantisation, ...).
    """
    if not isinstance(hf, Mapping):
      raise ValueError(f"hf config: expected a mapping, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"config attribute 'model_type'={model_type!r} is not supported: "
                       f"expected one of {MODEL_TYPES}")
    if dtype is None:
      saved = hf.get("dtype", hf.get("torch_dtype"))
      dtype = "bfloat16" if saved == "bfloat16" else "float32"
    if model_type == "gpt2":
      return cls._from_gpt2(hf, dtype)
    return cls._from_llama(hf, dtype)

  @classmethod
  def _from_llama(cls, hf: Mapping[str, Any], dtype: str) -> ModelConfig:
    model_type = hf["model_type"]
    used = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
            "rope_theta", "rope_scaling", "rope_parameters", "rms_norm_eps",
            "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias",
            "use_sliding_window", "sliding_window", "layer_types", "quantization_config",
            "rope_interleaved"}
    _check_unknown(hf, used)
    if _get(hf, "rope_interleaved", "bool", False):
      raise _reject("rope_interleaved", hf["rope_interleaved"], "false (HF rotate_half layout)")
    rope_theta = _get(hf, "rope_theta", "number", None)
    rope_scaling = None
    supported = "rope_type 'default'" + (" or 'llama3'" if model_type == "llama" else "")
    for key in ("rope_scaling", "rope_parameters"):
      rope = hf.get(key)
      if rope is None:
        continue
      if not isinstance(rope, Mapping):
        raise _reject(key, rope, "a mapping or null")
      rope_type = rope.get("rope_type", rope.get("type", "default"))
      allowed = {"rope_type", "type", "rope_theta"}
      if rope_type == "llama3" and model_type == "llama":
        allowed |= set(_LLAMA3_KEYS)
        if any(k not in rope for k in _LLAMA3_KEYS):
          raise _reject(key, dict(rope), f"llama3 rope scaling with all of {_LLAMA3_KEYS}")
        values = {k: (int if k.startswith("original") else float)(
          _get(rope, k, "int" if k.startswith("original") else "number", parent=key + "."))
          for k in _LLAMA3_KEYS}
        rope_scaling = Llama3RopeScaling(**values)
      elif rope_type != "default":
        raise _reject(key, dict(rope), supported)
      extra = sorted(set(rope) - allowed)
      if extra:
        raise _reject(key, dict(rope), f"no {extra} entries with {supported}")
      if "rope_theta" in rope:
        rope_theta = _get(rope, "rope_theta", "number", parent=key + ".")
    if hf.get("quantization_config") is not None:
      raise _reject("quantization_config", hf["quantization_config"], "null (no quantisation)")
    if _get(hf, "use_sliding_window", "bool", False):
      raise _reject("use_sliding_window", hf["use_sliding_window"], "false (full attention)")
    sliding_window = _get(hf, "sliding_window", "int|null", None)
    if model_type == "llama" and sliding_window is not None:
      raise _reject("sliding_window", sliding_window, "null for llama")
    layer_types = _get(hf, "layer_types", "str-list|null", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
      raise _reject("layer_types", layer_types, "'full_attention' for every layer")
    if model_type == "qwen2":
      for key in ("attention_bias", "mlp_bias"):
        if _get(hf, key, "bool", False):
          raise _reject(key, hf[key], "absent or false for qwen2")
      attention_bias, out_bias, mlp_bias = True, False, False
    else:
      attention_bias = _get(hf, "attention_bias", "bool", False)
      out_bias = attention_bias
      mlp_bias = _get(hf, "mlp_bias", "bool", False)
    hidden_act = _get(hf, "hidden_act", "str", "silu")
    if hidden_act not in _ACTIVATIONS[model_type]:
      raise _reject("hidden_act", hidden_act, f"one of {_ACTIVATIONS[model_type]}")
    return cls(
      model_type=model_type,
      vocab_size=_get(hf, "vocab_size", "int"),
      hidden_size=_get(hf, "hidden_size", "int"),
      intermediate_size=_get(hf, "intermediate_size", "int"),
      num_hidden_layers=_get(hf, "num_hidden_layers", "int"),
      num_attention_heads=_get(hf, "num_attention_heads", "int"),
      num_key_value_heads=_get(hf, "num_key_value_heads", "int|null", None),
      head_dim=_get(hf, "head_dim", "int|null", None),
      max_position_embeddings=_get(hf, "max_position_embeddings", "int", 2048),
      rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
      rope_scaling=rope_scaling,
      norm_eps=float(_get(hf, "rms_norm_eps", "number", 1e-6)),
      tie_word_embeddings=_get(hf, "tie_word_embeddings", "bool", False),
      attention_bias=attention_bias,
      attention_out_bias=out_bias,
      mlp_bias=mlp_bias,
      hidden_act=hidden_act,
      dtype=dtype,
      **_common(hf),
    )

  @classmethod
  def _from_gpt2(cls, hf: Mapping[str, Any], dtype: str) -> ModelConfig:
    used = {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
            "activation_function", "layer_norm_epsilon", "scale_attn_weights",
            "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
            "tie_word_embeddings", "quantization_config"}
    _check_unknown(hf, used)
    if hf.get("quantization_config") is not None:
      raise _reject("quantization_config", hf["quantization_config"], "null (no quantisation)")
    if not _get(hf, "scale_attn_weights", "bool", True):
      raise _reject("scale_attn_weights", hf["scale_attn_weights"], "true")
    if _get(hf, "scale_attn_by_inverse_layer_idx", "bool", False):
      raise _reject("scale_attn_by_inverse_layer_idx",
                    hf["scale_attn_by_inverse_layer_idx"], "false")
    _get(hf, "reorder_and_upcast_attn", "bool", False)  # float32 attention: ours already is
    activation = _get(hf, "activation_function", "str", "gelu_new")
    if activation not in _ACTIVATIONS["gpt2"]:
      raise _reject("activation_function", activation, f"one of {_ACTIVATIONS['gpt2']}")
    hidden = _get(hf, "n_embd", "int")
    inner = _get(hf, "n_inner", "int|null", None)
    return cls(
      model_type="gpt2",
      vocab_size=_get(hf, "vocab_size", "int"),
      hidden_size=hidden,
      intermediate_size=inner if inner is not None else 4 * hidden,
      num_hidden_layers=_get(hf, "n_layer", "int"),
      num_attention_heads=_get(hf, "n_head", "int"),
      max_position_embeddings=_get(hf, "n_positions", "int"),
      norm_eps=float(_get(hf, "layer_norm_epsilon", "number", 1e-5)),
      tie_word_embeddings=_get(hf, "tie_word_embeddings", "bool", True),
      attention_bias=True,
      attention_out_bias=True,
      mlp_bias=True,
      hidden_act=activation,
      dtype=dtype,
      **_common(hf),
    )

  def to_hf_config(self) -> dict[str, Any]:
    """Returns a `config.json` dictionary that transformers loads back into this model."""
    eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
    common = {
      "vocab_size": self.vocab_size,
      "tie_word_embeddings": self.tie_word_embeddings,
      "initializer_range": self.initializer_range,
      "bos_token_id": self.bos_token_id,
      "eos_token_id": eos,
      "pad_token_id": self.pad_token_id,
      "dtype": self.dtype,
      "torch_dtype": self.dtype,
    }
    if self.model_type == "gpt2":
      return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": self.hidden_size,
        "n_inner": self.intermediate_size,
        "n_layer": self.num_hidden_layers,
        "n_head": self.num_attention_heads,
        "n_positions": self.max_position_embeddings,
        "n_ctx": self.max_position_embeddings,
        "activation_function": self.hidden_act,
        "layer_norm_epsilon": self.norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        **common,
      }
    out = {
      "model_type": self.model_type,
      "architectures": ["LlamaForCausalLM" if self.model_type == "llama" else "Qwen2ForCausalLM"],
      "hidden_size": self.hidden_size,
      "intermediate_size": self.intermediate_size,
      "num_hidden_layers": self.num_hidden_layers,
      "num_attention_heads": self.num_attention_heads,
      "num_key_value_heads": self.num_key_value_heads,
      "head_dim": self.head_dim,
      "max_position_embeddings": self.max_position_embeddings,
      "rope_theta": self.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
      "rope_scaling": None,
      "rms_norm_eps": self.norm_eps,
      "hidden_act": self.hidden_act,
      "attention_dropout": 0.0,
      **common,
    }
    if self.model_type == "llama":
      if self.attention_bias != self.attention_out_bias:
        raise ValueError("llama's attention_bias covers q/k/v and o together: cannot save "
                         f"attention_bias={self.attention_bias} with attention_out_bias="
                         f"{self.attention_out_bias}")
      if self.rope_scaling is not None:
        out["rope_parameters"] = {**self.rope_scaling.to_hf(), "rope_theta": self.rope_theta}
        out["rope_scaling"] = self.rope_scaling.to_hf()
      out["attention_bias"] = self.attention_bias
      out["mlp_bias"] = self.mlp_bias
    else:
      out["use_sliding_window"] = False
      out["sliding_window"] = None
    return out


def _common(hf: Mapping[str, Any]) -> dict[str, Any]:
  eos = _get(hf, "eos_token_id", "ids|null", None)
  return dict(
    initializer_range=float(_get(hf, "initializer_range", "number", 0.02)),
    bos_token_id=_get(hf, "bos_token_id", "int|null", None),
    eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
    pad_token_id=_get(hf, "pad_token_id", "int|null", None),
  )


# Types of the dataclass fields, checked in __post_init__ (direct construction included).
_FIELD_KINDS = {
  "vocab_size": "int", "hidden_size": "int", "intermediate_size": "int",
  "num_hidden_layers": "int", "num_attention_heads": "int", "num_key_value_heads": "int|null",
  "head_dim": "int|null", "max_position_embeddings": "int", "rope_theta": "number",
  "norm_eps": "number", "tie_word_embeddings": "bool", "attention_bias": "bool",
  "attention_out_bias": "bool", "mlp_bias": "bool", "initializer_range": "number",
  "bos_token_id": "int|null", "eos_token_id": "ids|null", "pad_token_id": "int|null",
}


def _check_unknown(hf: Mapping[str, Any], used: set[str]) -> None:
  for key in ("add_cross_attention", "is_encoder_decoder", "tie_encoder_decoder"):
    if hf.get(key):
      raise _reject(key, hf[key], "false (decoder-only models)")
  unknown = sorted(k for k in set(hf) - used if not _is_metadata(k))
  if unknown:
    raise ValueError(
      f"config attribute {unknown[0]!r} (model_type={hf.get('model_type')!r}) is not "
      f"implemented by pacbayes.models; unknown attributes: {unknown}")
