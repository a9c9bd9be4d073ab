"""The held-out certificate: a test-set bound on the fine-tuned weights themselves.

`pacbayes finetune --holdout FRACTION` keeps a random part of the training rows out of
training and records them in ``holdout.json``; this module turns the deterministic fine-tuned
model's per-row losses on those rows into a certificate (no posterior noise, no Monte-Carlo
term, no PAC-Bayes term), per difficulty slice and on a test mixture, and checks that a
training file is the one the record was made from. It takes arrays of losses: no model code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from pacbayes.bounds import testset
from pacbayes.bounds.checks import is_vacuous
from pacbayes.bounds.delta import split_delta
from pacbayes.bounds.mixture import MixtureBounds, mixture_shift_bound
from pacbayes.core import jsonio
from pacbayes.core.atomic import write_text

__all__ = ["KIND_HELDOUT", "SCHEMA", "HeldOutCertificate", "HoldoutRecord",
           "check_holdout_record", "file_sha256", "heldout_certificate", "read_holdout_record"]

SCHEMA = "pacbayes.certificate.heldout/1"
KIND_HELDOUT = "held-out test-set bound on the fine-tuned weights"
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------ the record


@dataclasses.dataclass(frozen=True)
class HoldoutRecord:
  """What `pacbayes finetune --holdout` recorded about the rows it kept out of training.

  Attributes:
    path: the ``holdout.json`` it was read from.
    train_sha256: sha256 (hex) of the training file's bytes at fine-tuning time.
    heldout_lines: the held-out rows, as the record lists them (distinct integers >= 0).
    fraction: the fraction held out, in (0, 1).
    seed: the seed of the random split.
  """

  path: str
  train_sha256: str
  heldout_lines: tuple[int, ...]
  fraction: float
  seed: int


def file_sha256(path: str | os.PathLike) -> str:
  """sha256 (hex) of a file's bytes, read in 1 MiB chunks.

  Raises:
    ValueError: naming the file when it cannot be read.
  """
  path = os.fspath(path)
  h = hashlib.sha256()
  try:
    with open(path, "rb") as f:
      while chunk := f.read(_CHUNK):
        h.update(chunk)
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e.strerror})") from None
  return h.hexdigest()


def _int(value: Any, where: str, lo: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < lo:
    raise ValueError(f"{where}: expected an integer >= {lo}, got {json.dumps(value)[:40]}")
  return value


def read_holdout_record(path: str | os.PathLike) -> HoldoutRecord:
  """Reads and checks ``holdout.json`` ({"train_sha256", "heldout_lines", "fraction", "seed"};
  ``held_out_lines``, the key `pacbayes finetune --holdout` writes, is read as
  ``heldout_lines``: 1-based line numbers of the training file).

  Raises:
    ValueError: one line naming the file and the key: unreadable, not JSON, a missing key or
      a value of the wrong kind (a sha256 that is not 64 hex digits, repeated lines, ...).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: cannot read the holdout record (no such file)")
  data = jsonio.read_json(path)  # one line naming the file (and line) on any failure
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object (the holdout record)")
  if "heldout_lines" not in data and "held_out_lines" in data:
    data = {**data, "heldout_lines": data["held_out_lines"]}  # the key finetune writes
  for key in ("train_sha256", "heldout_lines", "fraction", "seed"):
    if key not in data:
      raise ValueError(f"{path}: key {key!r}: missing from the holdout record")
  sha = data["train_sha256"]
  if not (isinstance(sha, str) and len(sha) == 64
          and all(c in "0123456789abcdef" for c in sha.lower())):
    raise ValueError(f"{path}: key 'train_sha256': expected 64 hex digits, got "
                     f"{json.dumps(sha)[:72]}")
  lines = data["heldout_lines"]
  if not isinstance(lines, list) or not lines:
    raise ValueError(f"{path}: key 'heldout_lines': expected a non-empty list of row numbers")
  rows = tuple(_int(v, f"{path}: key 'heldout_lines[{i}]'", 0) for i, v in enumerate(lines))
  if len(set(rows)) != len(rows):
    raise ValueError(f"{path}: key 'heldout_lines': a row is listed twice")
  frac = data["fraction"]
  if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
    raise ValueError(f"{path}: key 'fraction': expected a number in (0, 1), got "
                     f"{json.dumps(frac)[:40]}")
  seed = _int(data["seed"], f"{path}: key 'seed'", 0)
  return HoldoutRecord(path=path, train_sha256=sha.lower(), heldout_lines=rows,
                       fraction=float(frac), seed=seed)


def check_holdout_record(train_path: str | os.PathLike,
                         record: HoldoutRecord | str | os.PathLike) -> HoldoutRecord:
  """The record (read if a path) after checking that ``train_path`` is the file it was made from.

  The held-out rows are certified only if they are the rows kept out of training, which the
  record can promise only for the exact bytes it hashed: any change (an edited row, a
  re-ordered or re-generated file) is refused.

  Raises:
    ValueError: one line naming the training file, when its sha256 differs from the recorded
      one (or either file cannot be read / the record is malformed).
  """
  rec = record if isinstance(record, HoldoutRecord) else read_holdout_record(record)
  train_path = os.fspath(train_path)
  got = file_sha256(train_path)
  if got != rec.train_sha256:
    raise ValueError(f"{train_path}: sha256 {got[:12]}... differs from the {rec.train_sha256[:12]}"
                     f"... recorded in {rec.path}: not the training file the held-out rows were "
                     "kept out of")
  return rec


# ----------------------------------------------------------------------------- certificate


@dataclasses.dataclass(frozen=True)
class HeldOutCertificate:
  """Held-out test-set bounds on the true risk of the fine-tuned weights (no posterior).

  With probability at least ``1 - delta`` (``delta`` = the sum of ``delta_parts``, over the
  draw of the held-out rows and the mixture estimates) every ``bound*`` value below holds at
  once, for the deterministic fine-tuned model:

    R_train(w_ft) <= bound_train           (the training mixture the rows came from)
    R_d(w_ft)     <= slices[i]["bound"]    (each difficulty slice)
    R_test(w_ft)  <= bound_test = min(per-slice mixture value, mixture-shift value)

  Attributes:
    kind: `KIND_HELDOUT`, in words.
    loss: name of the [0, 1] loss.
    zero_one: the loss is 0/1 (exact binomial tail) rather than in [0, 1] (kl-Chernoff).
    method: the tail bound used, in words.
    m: held-out rows.
    errors: sum of their losses.
    emp_risk: mean loss on the held-out rows (measured, the fine-tune's own risk).
    bound_train: test-set bound on the training-mixture risk.
    bound_test: the smallest certified test-mixture value (None without a test mixture).
    test_kind: "per_slice" or "mixture_shift": which value is ``bound_test`` (or None).
    per_slice_value: ``m_out + sum_d p_test(d) B_d`` (worst case over the test mixture).
    mixture_shift_value: ``mixture_shift_bound(bound_train, mixture)``.
    slices: per slice: difficulty, m, errors, emp_risk, bound, method, non_vacuous.
    mixture: ``MixtureBounds.to_dict()`` or None.
    delta: total confidence spent.
    delta_parts: (name, delta) pairs summing to ``delta``.
    posterior_noise: always None: the weights are not perturbed.
    monte_carlo: always None: no Monte-Carlo term.
    not_used_for_training: the statement that the held-out rows were not trained on.
    record: the holdout record's path, training-file sha256, fraction, seed (or None).
    notes: one-line remarks.
  """

  kind: str
  loss: str
  zero_one: bool
  method: str
  m: int
  errors: float
  emp_risk: float
  bound_train: float
  bound_test: float | None
  test_kind: str | None
  per_slice_value: float | None
  mixture_shift_value: float | None
  slices: tuple[dict[str, Any], ...]
  mixture: dict[str, Any] | None
  delta: float
  delta_parts: tuple[tuple[str, float], ...]
  not_used_for_training: str
  record: dict[str, Any] | None = None
  notes: tuple[str, ...] = ()
  posterior_noise: None = None
  monte_carlo: None = None

  def __post_init__(self):
    total = math.fsum(v for _, v in self.delta_parts)
    if not math.isclose(total, self.delta, rel_tol=1e-12, abs_tol=0.0):
      raise ValueError(f"HeldOutCertificate.delta {self.delta!r} != sum of delta_parts {total!r}")

  @property
  def non_vacuous(self) -> bool:
    """True when the headline bound (test mixture if given, else training mixture) is < 1."""
    return not is_vacuous(self.bound_train if self.bound_test is None else self.bound_test)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: every field, ``schema``, and the ``non_vacuous`` flags of each bound."""
    out: dict[str, Any] = {"schema": SCHEMA}
    for f in dataclasses.fields(self):
      out[f.name] = getattr(self, f.name)
    out["slices"] = [dict(s) for s in self.slices]
    out["delta_parts"] = [[k, v] for k, v in self.delta_parts]
    out["notes"] = list(self.notes)
    out["non_vacuous"] = self.non_vacuous
    out["bound_train_non_vacuous"] = not is_vacuous(self.bound_train)
    out["bound_test_non_vacuous"] = (None if self.bound_test is None
                                     else not is_vacuous(self.bound_test))
    return json.loads(json.dumps(out, allow_nan=False))

  def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
    """Serialises to JSON; writes ``path`` atomically if given."""
    text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
    if path is not None:
      write_text(path, text)
    return text

  def to_table(self) -> str:
    """Plain text: the kind, the bounds with their flags, slices, delta parts, the statement."""
    def flag(v: float) -> str:
      return "VACUOUS (>= 1)" if is_vacuous(v) else "non-vacuous"

    lines = [f"{self.kind} ({self.method})",
             f"  held-out rows m = {self.m}, loss {self.loss}: measured risk {self.emp_risk:.4f}",
             f"  bound on the training mixture: {self.bound_train:.4f}  {flag(self.bound_train)}"]
    for s in self.slices:
      lines.append(f"    slice d={s['key']}: m={s['m']}, bound {s['bound']:.4f}  "
                   f"{flag(s['bound'])}")
    if self.bound_test is not None:
      lines.append(f"  bound on the test mixture: {self.bound_test:.4f} ({self.test_kind})  "
                   f"{flag(self.bound_test)}")
    lines.append("  no posterior noise, no Monte-Carlo term; delta = "
                 + ", ".join(f"{k} {v:.3g}" for k, v in self.delta_parts))
    lines.append(f"  {self.not_used_for_training}")
    lines.extend(f"  note: {x}" for x in self.notes)
    return "\n".join(lines)


def heldout_certificate(
    losses: Any,
    *,
    delta: float = 0.05,
    difficulty: Any = None,
    mixture: MixtureBounds | None = None,
    zero_one: bool = False,
    loss: str = "sequence_error",
    record: HoldoutRecord | None = None,
    notes: Sequence[str] = (),
) -> HeldOutCertificate:
  """Certifies the fine-tuned weights from their per-row losses on the held-out rows.

  Without a mixture all of ``delta`` goes to one test-set bound on the training-mixture risk
  (`pacbayes.bounds.testset.holdout_bound`: exact binomial tail for a 0/1 loss, Langford
  2005 Theorem 3.3; kl-Chernoff otherwise). With a mixture, ``delta`` is first charged the
  mixture's own delta (estimated mixtures), and the rest is split equally between that
  bound ("heldout") and the per-slice bounds ("slices", union bound over the slices); the
  test-mixture value is the smaller of the per-slice worst case
  (`testset.slice_holdout_bounds`) and the mixture-shift worst case of the training-mixture
  bound (`pacbayes.bounds.mixture.mixture_shift_bound`), both paid for, so the minimum holds
  on the intersection of the events (docs/THEORY.md §5).

  Args:
    losses: [m] per-row losses in [0, 1] of the deterministic fine-tuned model on the
      held-out rows.
    delta: total confidence in (0, 1).
    difficulty: [m] difficulty of each held-out row (needed with ``mixture``).
    mixture: the train/test mixtures (`pacbayes.bounds.mixture.mixture_bounds`), or None.
    zero_one: the loss is 0/1 (e.g. sequence error): the exact binomial tail.
    loss: the loss's name, for the record.
    record: the checked holdout record (`check_holdout_record`), for the report.
    notes: one-line remarks.

  Returns:
    A `HeldOutCertificate`.

  Raises:
    ValueError: bad losses or delta, difficulty without a mixture (or the reverse), a
      mixture whose delta leaves nothing, lengths that disagree.

  References:
    Langford, "Tutorial on practical prediction theory for classification", JMLR 6, 2005.
  """
  if (difficulty is None) != (mixture is None):
    raise ValueError("difficulty, mixture: give both (per-slice and test-mixture bounds) or "
                     "neither")
  delta = float(delta)
  if not 0.0 < delta < 1.0:
    raise ValueError(f"delta: expected a value in (0, 1), got {delta!r}")
  if mixture is None:
    parts = {"heldout": delta}
  else:
    rest = delta - mixture.delta
    if rest <= 0:
      raise ValueError(f"delta {delta!r} leaves nothing after the mixture's {mixture.delta!r}")
    parts = split_delta(rest, ["heldout", "slices"])
  overall = testset.holdout_bound(losses, parts["heldout"], zero_one=zero_one)
  if record is not None and len(record.heldout_lines) != overall.m:
    raise ValueError(f"{record.path}: key 'heldout_lines': {len(record.heldout_lines)} rows "
                     f"recorded, but {overall.m} losses were given")
  slices_out: tuple[dict[str, Any], ...] = ()
  per_slice = shift = best = kind = None
  delta_parts = [("heldout", parts["heldout"])]
  if mixture is not None:
    sl = testset.slice_holdout_bounds(losses, difficulty, mixture, parts["slices"],
                                      zero_one=zero_one)
    slices_out = tuple(sl.to_dict()["slices"])
    per_slice = float(sl.value)
    shift = float(mixture_shift_bound(overall.value, mixture))
    best, kind = min((per_slice, "per_slice"), (shift, "mixture_shift"))
    delta_parts += [("slices", parts["slices"]), ("mixture", mixture.delta)]
  rec = None if record is None else {"path": record.path, "train_sha256": record.train_sha256,
                                     "fraction": record.fraction, "seed": record.seed,
                                     "num_heldout_lines": len(record.heldout_lines)}
  statement = (f"the {overall.m} held-out rows were not used for training"
               + (f" (kept out by `pacbayes finetune --holdout {record.fraction:g}`, seed "
                  f"{record.seed}; training file sha256 {record.train_sha256[:12]}... checked)"
                  if record is not None else ""))
  return HeldOutCertificate(
      kind=KIND_HELDOUT, loss=str(loss), zero_one=bool(zero_one), method=overall.method,
      m=overall.m, errors=overall.errors, emp_risk=overall.emp_risk,
      bound_train=overall.value, bound_test=best, test_kind=kind, per_slice_value=per_slice,
      mixture_shift_value=shift, slices=slices_out,
      mixture=None if mixture is None else mixture.to_dict(),
      delta=math.fsum(v for _, v in delta_parts), delta_parts=tuple(delta_parts),
      not_used_for_training=statement, record=rec, notes=tuple(str(x) for x in notes))
