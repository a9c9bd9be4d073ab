"""The synthetic task: iGSM-style modular arithmetic whose difficulty is the op count.

One module per topic, lowest first:

- `tokenizer`: the 48-symbol vocabulary and its word-level tokenizer (and the HF files).
- `problems`: `Statement`, `Problem` (validated and solved), random problems of a given op
  count, op-count mixtures, the fixed prompt and completion lengths.
- `datasets`: problems as JSONL rows (token ids or text), data sets and train/test splits.
- `grading`: the answer a completion states, and a prompt's answer solved from its text.

``from pacbayes.data import synthetic; synthetic.generate_dataset(...)`` reaches every public
name of the four modules.

References:
  Ye, Xu, Li, Allen-Zhu (2024), "Physics of Language Models: Part 2.1, Grade-School Math and
  the Hidden Reasoning Process", arXiv 2407.20311 (iGSM). The simplification here: one
  operation per statement, constants written inline instead of separate leaf parameters, no
  natural-language templates, a single-token vocabulary of 48 symbols.
"""

from pacbayes.data.synthetic.datasets import ROW_FORMATS as ROW_FORMATS
from pacbayes.data.synthetic.datasets import generate_dataset as generate_dataset
from pacbayes.data.synthetic.datasets import generate_splits as generate_splits
from pacbayes.data.synthetic.datasets import problem_to_row as problem_to_row
from pacbayes.data.synthetic.datasets import write_jsonl as write_jsonl
from pacbayes.data.synthetic.grading import evaluate_answer as evaluate_answer
from pacbayes.data.synthetic.grading import extract_answer as extract_answer
from pacbayes.data.synthetic.problems import DEFAULT_MODULUS as DEFAULT_MODULUS
from pacbayes.data.synthetic.problems import MAX_STATEMENTS as MAX_STATEMENTS
from pacbayes.data.synthetic.problems import OpsSpec as OpsSpec
from pacbayes.data.synthetic.problems import Problem as Problem
from pacbayes.data.synthetic.problems import Statement as Statement
from pacbayes.data.synthetic.problems import completion_length as completion_length
from pacbayes.data.synthetic.problems import generate_problem as generate_problem
from pacbayes.data.synthetic.problems import generate_problems as generate_problems
from pacbayes.data.synthetic.problems import parse_problem as parse_problem
from pacbayes.data.synthetic.problems import prompt_length as prompt_length
from pacbayes.data.synthetic.tokenizer import BOS_ID as BOS_ID
from pacbayes.data.synthetic.tokenizer import EOS_ID as EOS_ID
from pacbayes.data.synthetic.tokenizer import MODEL_MAX_LENGTH as MODEL_MAX_LENGTH
from pacbayes.data.synthetic.tokenizer import PAD_ID as PAD_ID
from pacbayes.data.synthetic.tokenizer import SEP_ID as SEP_ID
from pacbayes.data.synthetic.tokenizer import UNK_ID as UNK_ID
from pacbayes.data.synthetic.tokenizer import VOCAB as VOCAB
from pacbayes.data.synthetic.tokenizer import VOCAB_SIZE as VOCAB_SIZE
from pacbayes.data.synthetic.tokenizer import SyntheticTokenizer as SyntheticTokenizer
from pacbayes.data.synthetic.tokenizer import save_tokenizer as save_tokenizer

__all__ = [
  "BOS_ID",
  "DEFAULT_MODULUS",
  "EOS_ID",
  "MAX_STATEMENTS",
  "MODEL_MAX_LENGTH",
  "OpsSpec",
  "PAD_ID",
  "Problem",
  "ROW_FORMATS",
  "SEP_ID",
  "Statement",
  "SyntheticTokenizer",
  "UNK_ID",
  "VOCAB",
  "VOCAB_SIZE",
  "completion_length",
  "evaluate_answer",
  "extract_answer",
  "generate_dataset",
  "generate_problem",
  "generate_problems",
  "generate_splits",
  "parse_problem",
  "problem_to_row",
  "prompt_length",
  "save_tokenizer",
  "write_jsonl",
]
