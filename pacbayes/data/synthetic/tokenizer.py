"""The synthetic task's vocabulary and its word-level tokenizer (one token per symbol).

48 symbols: 5 special tokens, the digits 0-9, ``= ; ? + - * answer`` and the variable names
a-z. The Hugging Face tokenizer written by `SyntheticTokenizer.save_pretrained` gives the same
ids, so rows in either format (`pacbayes.data.synthetic.datasets`) load alike.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

PAD, BOS, EOS, SEP, UNK = "<pad>", "<bos>", "<eos>", "<sep>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, SEP, UNK)
DIGITS = tuple(str(d) for d in range(10))
OPERATORS = ("+", "-", "*")
ANSWER = "answer"
SYMBOLS = ("=", ";", "?", *OPERATORS, ANSWER)
VARIABLES = tuple("abcdefghijklmnopqrstuvwxyz")
VOCAB = SPECIAL_TOKENS + DIGITS + SYMBOLS + VARIABLES
PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID = range(5)
VOCAB_SIZE = len(VOCAB)
# Longest sequence the task can make: 26 statements, all needed (prompt 160 + completion 211).
MODEL_MAX_LENGTH = 512

# Special tokens split off even without surrounding spaces; everything else splits on spaces.
_TOKEN_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS) + r"|[^\s<]+|<")


def split_symbols(text: str) -> list[str]:
  """The symbols of ``text``: whitespace-separated, special tokens split off even when glued
  to a neighbour (``"<sep>a"`` gives ``["<sep>", "a"]``)."""
  return _TOKEN_RE.findall(text)


def prompt_symbols(text: str) -> list[str]:
  """The symbols of a prompt's text between ``<bos>`` and ``<sep>`` (anything after the
  first ``<sep>`` is dropped, and so is every ``<bos>``)."""
  toks = text.split()
  if SEP in toks:
    toks = toks[: toks.index(SEP)]
  return [t for t in toks if t != BOS]


class SyntheticTokenizer:
  """Word-level tokenizer of the synthetic task: one token per whitespace-separated symbol.

  Special tokens are also split off where no space surrounds them (``"<sep>a"``), as the
  Hugging Face tokenizer written by `save_pretrained` does; any other unknown symbol raises.
  """

  vocab = VOCAB
  pad_id, bos_id, eos_id, sep_id, unk_id = PAD_ID, BOS_ID, EOS_ID, SEP_ID, UNK_ID

  def __init__(self):
    self.token_to_id = {t: i for i, t in enumerate(VOCAB)}

  @property
  def vocab_size(self) -> int:
    """48: 5 special tokens, digits 0-9, ``= ; ? + - * answer`` and a-z."""
    return len(VOCAB)

  def tokenize(self, text: str) -> list[str]:
    """The symbols of ``text`` (`split_symbols`)."""
    return split_symbols(text)

  def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
    """Ids of symbols; raises `ValueError` on a symbol outside the vocabulary."""
    try:
      return [self.token_to_id[t] for t in tokens]
    except KeyError as e:
      raise ValueError(f"text: symbol {e.args[0]!r} is not in the synthetic vocabulary") from None

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``; no special token is added."""
    return self.convert_tokens_to_ids(self.tokenize(text))

  def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
    """Space-joined tokens of ``ids`` (the inverse of `encode` on space-separated text)."""
    out = []
    for i in ids:
      i = int(i)
      if not 0 <= i < len(VOCAB):
        raise ValueError(f"ids: {i} is outside the vocabulary [0, {len(VOCAB)})")
      if skip_special_tokens and i < len(SPECIAL_TOKENS):
        continue
      out.append(VOCAB[i])
    return " ".join(out)

  def to_hf(self):
    """The same tokenizer as a `transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(self.token_to_id), unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token=PAD,
      bos_token=BOS,
      eos_token=EOS,
      sep_token=SEP,
      unk_token=UNK,
      clean_up_tokenization_spaces=False,
      padding_side="right",
    )

  def save_pretrained(self, directory: str | os.PathLike) -> None:
    """Writes ``tokenizer.json`` and its config for ``AutoTokenizer.from_pretrained``."""
    directory = os.fspath(directory)
    self.to_hf().save_pretrained(directory)
    # transformers 5 records its own backend class name; the generic fast class loads in
    # both 4.x and 5.x.
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = MODEL_MAX_LENGTH
    with open(config_path, "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
      f.write("\n")


def save_tokenizer(directory: str | os.PathLike) -> None:
  """Writes the synthetic task's Hugging Face tokenizer files into ``directory``."""
  SyntheticTokenizer().save_pretrained(directory)


__all__ = [
  "ANSWER",
  "BOS",
  "BOS_ID",
  "DIGITS",
  "EOS",
  "EOS_ID",
  "MODEL_MAX_LENGTH",
  "OPERATORS",
  "PAD",
  "PAD_ID",
  "SEP",
  "SEP_ID",
  "SPECIAL_TOKENS",
  "SYMBOLS",
  "SyntheticTokenizer",
  "UNK",
  "UNK_ID",
  "VARIABLES",
  "VOCAB",
  "VOCAB_SIZE",
  "prompt_symbols",
  "save_tokenizer",
  "split_symbols",
]
