"""Offline tokenisation of dataset strings with a checkpoint's own tokenizer files.

Conventions (used by `pacbayes.data.dataset`):

- A ``text`` row is encoded as ``tokenizer(text, add_special_tokens=True)``: whatever the
  tokenizer's post-processor adds (BOS for Llama tokenizers, nothing for GPT-2 and Qwen2) is
  kept, and no EOS is appended beyond that. The text is scored as the tokenizer would see it.
- A ``prompt``/``completion`` row is encoded as
  ``prefix + encode(prompt) + encode(completion) + [eos]``, where ``prefix`` is the special
  prefix the tokenizer adds to a single sequence (BOS or nothing), both strings are encoded
  without special tokens (so the prompt/completion boundary is exact and a prompt never gets a
  trailing EOS), and ``eos`` is ``tokenizer.eos_token_id`` when ``add_eos`` and the tokenizer
  defines one. The EOS is a target: the model is scored on stopping. Strings are used
  verbatim unless a chat template is asked for, and whitespace between prompt and completion
  is the caller's (GPT-2-style BPE encodes " 42" and "42" differently).
- With a chat template (`render_chat_prompts`, `pacbayes bound --chat-template`), each
  ``prompt`` becomes the text of the conversation ``[{"role": "user", "content": prompt}]``
  rendered by the tokenizer's own template with the generation prompt appended (the text an
  instruction-tuned model sees before it answers), and the completion follows it verbatim.
  When the template writes the tokenizer's special prefix itself (``{{ bos_token }}``) and the
  encoder would add the same prefix again, the template's copy is removed, so it appears once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pacbayes.data.jsonl import DataError


def load_tokenizer(tokenizer_dir: str | os.PathLike) -> Any:
  """Loads a Hugging Face tokenizer from a local folder, never touching the network.

  Args:
    tokenizer_dir: a folder with ``tokenizer.json`` / ``tokenizer_config.json`` (usually the
      checkpoint folder itself).

  Returns:
    The ``transformers`` tokenizer.

  Raises:
    DataError: the folder is missing or holds no loadable tokenizer.
  """
  tokenizer_dir = os.fspath(tokenizer_dir)
  if not os.path.isdir(tokenizer_dir):
    raise DataError(f"tokenizer_dir {tokenizer_dir!r}: no such folder")
  import transformers  # Slow to import; only text datasets need it.

  try:
    return transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(
      f"tokenizer_dir {tokenizer_dir!r}: could not load a tokenizer from it ({e})"
    ) from None


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
  """Finds the special tokens the tokenizer puts before and after a single sequence.

  Args:
    tokenizer: a ``transformers`` tokenizer.

  Returns:
    ``(prefix, suffix)`` id lists, e.g. ``([bos_id], [])`` for Llama tokenizers.
  """
  probe = "a b c"
  plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
  full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
  for start in range(len(full) - len(plain) + 1):
    if full[start : start + len(plain)] == plain:
      return full[:start], full[start + len(plain) :]
  # The post-processor rewrote the content itself; add nothing rather than guess.
  return [], []


def _encode_batch(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list:
  if not texts:
    return []
  return [
    list(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
  ]


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  """Encodes whole-text rows, with the tokenizer's own special tokens.

  Args:
    tokenizer: a ``transformers`` tokenizer.
    texts: the strings.

  Returns:
    One id list per string.
  """
  return _encode_batch(tokenizer, texts, add_special_tokens=True)


def encode_prompt_completions(
  tokenizer: Any,
  prompts: Sequence[str],
  completions: Sequence[str],
  *,
  add_eos: bool = True,
) -> list[tuple[list[int], list[int]]]:
  """Encodes prompt/completion pairs as described in the module docstring.

  Args:
    tokenizer: a ``transformers`` tokenizer.
    prompts: prompt strings.
    completions: completion strings, one per prompt.
    add_eos: append ``tokenizer.eos_token_id`` (when defined) to each completion.

  Returns:
    ``(prompt_ids, completion_ids)`` per pair; ``prompt_ids`` starts with the special prefix.
  """
  if len(prompts) != len(completions):
    raise ValueError(
      f"prompts and completions differ in length: {len(prompts)} != {len(completions)}"
    )
  prefix, _ = special_affixes(tokenizer)
  eos = tokenizer.eos_token_id if add_eos else None
  suffix = [] if eos is None else [int(eos)]
  prompt_ids = _encode_batch(tokenizer, prompts, add_special_tokens=False)
  completion_ids = _encode_batch(tokenizer, completions, add_special_tokens=False)
  return [
    (prefix + p, c + suffix if c else c)  # An empty completion stays empty (and is refused).
    for p, c in zip(prompt_ids, completion_ids, strict=True)
  ]


def render_chat_prompts(
  tokenizer: Any,
  prompts: Sequence[str],
  *,
  tokenizer_dir: str | os.PathLike | None = None,
  wheres: Sequence[str] | None = None,
) -> list[str]:
  """Renders each prompt as one user turn with the tokenizer's chat template.

  The result is the text ``tokenizer.apply_chat_template([{"role": "user", "content": p}],
  add_generation_prompt=True, tokenize=False)``, minus a leading copy of the special prefix
  (e.g. BOS) that `encode_prompt_completions` adds itself (see the module docstring).

  Args:
    tokenizer: a ``transformers`` tokenizer.
    prompts: the prompt strings.
    tokenizer_dir: where the tokenizer was loaded from, for error messages.
    wheres: ``"file:line"`` of each prompt, for error messages.

  Returns:
    One rendered string per prompt.

  Raises:
    DataError: the tokenizer has no chat template (naming the folder), or the template fails
      on a prompt (naming its file and line).
  """
  where_tok = f"tokenizer in {os.fspath(tokenizer_dir)!r}" if tokenizer_dir else "tokenizer"
  if not getattr(tokenizer, "chat_template", None):
    raise DataError(
      f"{where_tok}: has no chat template (no 'chat_template' in tokenizer_config.json and no "
      "chat_template.jinja); drop --chat-template or render the prompts yourself"
    )
  prefix, _ = special_affixes(tokenizer)
  prefix_text = "".join(tokenizer.convert_ids_to_tokens(prefix)) if prefix else ""
  out = []
  for i, prompt in enumerate(prompts):
    try:
      text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
      )
    except Exception as e:  # jinja2 raises its own exception types from user templates.
      where = wheres[i] if wheres is not None else f"prompt {i + 1}"
      raise DataError(f"{where}: the chat template of the {where_tok} failed ({e})") from None
    if not isinstance(text, str):
      raise DataError(f"{where_tok}: the chat template returned {type(text).__name__}, not text")
    if prefix_text and text.startswith(prefix_text):
      text = text[len(prefix_text) :]
    out.append(text)
  return out


def apply_chat_template_rows(
  rows: Sequence[Any],
  tokenizer: Any,
  *,
  source: str,
  line_numbers: Sequence[int],
  tokenizer_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
  """Copies of JSONL rows whose ``prompt`` is rendered with the chat template.

  The inputs are not modified. Every row must be a ``prompt``/``completion`` row: a chat
  template needs a user turn, and scoring ``text`` or token-id rows through one is not
  defined, so such rows are refused rather than passed through unchanged.

  Args:
    rows: the rows as read from ``source``.
    tokenizer: a ``transformers`` tokenizer with a chat template.
    source: the file name, for error messages.
    line_numbers: each row's line in ``source``.
    tokenizer_dir: where the tokenizer was loaded from, for error messages.

  Returns:
    New row dicts, ``prompt`` replaced by its rendered text.

  Raises:
    DataError: ``"source:line: ..."`` for a row without a string ``prompt``; see
      `render_chat_prompts`.
  """
  wheres = [f"{source}:{line}" for line in line_numbers]
  for row, where in zip(rows, wheres, strict=True):
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
      raise DataError(
        f"{where}: --chat-template renders the 'prompt' of prompt/completion rows, and this row "
        "has no string 'prompt'"
      )
  rendered = render_chat_prompts(
    tokenizer, [r["prompt"] for r in rows], tokenizer_dir=tokenizer_dir, wheres=wheres
  )
  return [{**row, "prompt": text} for row, text in zip(rows, rendered, strict=True)]
