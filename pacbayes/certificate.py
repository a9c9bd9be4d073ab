"""Proposition 4.1 assembled: the two-gap risk certificate, its terms, JSON and a text table."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pacbayes import bounds
from pacbayes.atomic import write_text

__all__ = ["G_EXT_KINDS", "METHODS", "SCHEMA", "Certificate", "certify"]

SCHEMA = "pacbayes.certificate/1"

G_EXT_KINDS = ("certified under difficulty shift", "estimate", "none")
METHODS = ("maurer", "mcallester", "catoni", "fquad", "flamb")

_G_EXT_MEANING = {
  "certified under difficulty shift": "certified upper value for TV(D_test, D_train)",
  "estimate": "ESTIMATE of TV(D_test, D_train), not an upper value",
  "none": "left out: the bound is on the training distribution",
}


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _real(value: Any, name: str) -> float:
  _require(
    isinstance(value, numbers.Real) and not isinstance(value, bool),
    f"{name} must be a real number; got {value!r}.",
  )
  value = float(value)
  _require(math.isfinite(value), f"{name} must be finite; got {value!r}.")
  return value


def _integer(value: Any, name: str, lo: int) -> int:
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    if float(value).is_integer():
      value = int(value)
  _require(
    isinstance(value, int) and not isinstance(value, bool) and value >= lo,
    f"{name} must be an integer >= {lo}; got {value!r}.",
  )
  return value


@dataclasses.dataclass(frozen=True)
class Certificate:
  """The terms of the two-gap bound of Proposition 4.1, for one posterior and data set.

  With probability at least ``1 - delta`` (``delta = delta_mc + delta_pb + delta_ext``),

    E_Q[R_test] <= bound = emp_risk + epsilon + g_gen + g_ext,

  and the identity holds exactly in floating point (it is checked on construction, so a
  report read back from JSON is consistent). Nothing is capped: a ``bound`` of 1 or more is
  vacuous (``vacuous`` is then True) but its terms still tell which gap dominates.

  Attributes:
    n: number of training examples the PAC-Bayes term uses.
    num_params: number of perturbed parameters (None if unknown).
    sigma_q: posterior scale (None if not isotropic / unknown).
    sigma_p: prior scale (None if unknown).
    kl: KL(Q || P) in nats.
    emp_risk: Monte-Carlo estimate of E_Q[R_S].
    num_mc: number M of independent Monte-Carlo draws behind ``emp_risk``.
    epsilon: Monte-Carlo deviation, ``kl_inv_upper(emp_risk, ln(2/delta_mc)/M) - emp_risk``.
    g_gen: generalization gap from the PAC-Bayes bound ``method``.
    g_ext: extrapolation gap, an upper value (or estimate) for TV(D_test, D_train).
    g_ext_kind: one of ``G_EXT_KINDS``: what ``g_ext`` is.
    bound: ``emp_risk + epsilon + g_gen + g_ext``.
    delta: total failure probability.
    delta_mc: share spent on the Monte-Carlo term.
    delta_pb: share spent on the PAC-Bayes term.
    delta_ext: share spent on ``g_ext`` (0 when ``g_ext_kind`` is "none").
    grid_size: number k of prior scales searched; the union bound costs ``ln k``.
    loss: name of the [0, 1] loss.
    method: the PAC-Bayes bound behind ``g_gen`` (one of ``METHODS``).
    baselines: the whole bound with ``g_gen`` from each method in ``METHODS``, for comparison.
    extra: free JSON-serialisable details (e.g. how g_ext was obtained).
  """

  n: int
  num_params: int | None
  sigma_q: float | None
  sigma_p: float | None
  kl: float
  emp_risk: float
  num_mc: int
  epsilon: float
  g_gen: float
  g_ext: float
  g_ext_kind: str
  bound: float
  delta: float
  delta_mc: float
  delta_pb: float
  delta_ext: float
  grid_size: int
  loss: str
  method: str = "maurer"
  baselines: dict[str, float] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    _require(
      self.g_ext_kind in G_EXT_KINDS,
      f"g_ext_kind must be one of {G_EXT_KINDS}; got {self.g_ext_kind!r}.",
    )
    _require(self.method in METHODS, f"method must be one of {METHODS}; got {self.method!r}.")
    _require(
      self.g_ext_kind != "none" or (self.g_ext == 0.0 and self.delta_ext == 0.0),
      "g_ext_kind 'none' requires g_ext == 0 and delta_ext == 0.",
    )
    total = self.emp_risk + self.epsilon + self.g_gen + self.g_ext
    _require(
      self.bound == total,
      f"bound {self.bound!r} != emp_risk + epsilon + g_gen + g_ext = {total!r}.",
    )

  @property
  def vacuous(self) -> bool:
    """True when the bound is 1 or more: for a loss in [0, 1] it then says nothing."""
    return self.bound >= 1.0

  # ------------------------------------------------------------------------------------------
  # Serialisation.

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready dict: the DESIGN.md report keys first, then the rest, plus ``schema``."""
    out: dict[str, Any] = {"schema": SCHEMA}
    out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
    out["baselines"] = dict(self.baselines)
    out["extra"] = json.loads(json.dumps(self.extra))
    out["vacuous"] = self.vacuous
    return out

  def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
    """Serialises to JSON (floats round-trip exactly); writes ``path`` atomically if given.

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so a reader never sees half a report.
    """
    text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
    if path is not None:
      write_text(path, text)
    return text

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], *, source: str = "certificate") -> Certificate:
    """Rebuilds a Certificate from ``to_dict`` output (``source`` names it in errors)."""
    _require(isinstance(data, Mapping), f"{source}: expected a JSON object.")
    schema = data.get("schema", SCHEMA)
    _require(schema == SCHEMA, f"{source}: schema {schema!r} is not {SCHEMA!r}.")
    names = [f.name for f in dataclasses.fields(cls)]
    required = [
      f.name
      for f in dataclasses.fields(cls)
      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in data]
    _require(not missing, f"{source}: missing keys {missing}.")
    unknown = sorted(set(data) - set(names) - {"schema", "vacuous"})
    _require(not unknown, f"{source}: unknown keys {unknown}.")
    try:
      cert = cls(**{k: data[k] for k in names if k in data})
    except (TypeError, ValueError) as e:
      raise ValueError(f"{source}: {e}") from None
    if "vacuous" in data:
      _require(data["vacuous"] == cert.vacuous, f"{source}: 'vacuous' disagrees with 'bound'.")
    return cert

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> Certificate:
    """Reads a certificate written by ``to_json``."""
    path = os.fspath(path)
    try:
      with open(path) as f:
        data = json.load(f)
    except OSError as e:
      raise ValueError(f"{path}: cannot read certificate ({e.strerror}).") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    return cls.from_dict(data, source=path)

  # ------------------------------------------------------------------------------------------
  # Text.

  def to_table(self) -> str:
    """A plain-text table of the terms, what each means, and the kind of ``g_ext``."""
    conf = 1.0 - self.delta
    lines = [
      "Two-gap PAC-Bayes certificate (Proposition 4.1, arXiv 2605.12906)",
      f"With probability >= {conf:.4g} (delta = {self.delta:.4g} = {self.delta_mc:.3g} Monte-Carlo"
      f" + {self.delta_pb:.3g} PAC-Bayes + {self.delta_ext:.3g} shift):",
      f"  E_Q[R_test] <= {self.bound:.6f}"
      + ("   VACUOUS (>= 1: says nothing about a [0, 1] loss)" if self.vacuous else ""),
      "",
    ]
    rows = [
      (
        "emp_risk",
        self.emp_risk,
        f"Monte-Carlo estimate of E_Q[R_S] ({self.loss}, M={self.num_mc})",
      ),
      (
        "epsilon",
        self.epsilon,
        "Monte-Carlo deviation: kl_inv(emp_risk, ln(2/delta_mc)/M) - emp_risk",
      ),
      (
        "g_gen",
        self.g_gen,
        f"generalization gap ({self.method}): KL={self.kl:.6g} nats, n={self.n}, "
        f"ln k={math.log(self.grid_size):.3g}",
      ),
      (
        "g_ext",
        self.g_ext,
        f"extrapolation gap [{self.g_ext_kind}]: {_G_EXT_MEANING[self.g_ext_kind]}",
      ),
      ("bound", self.bound, "emp_risk + epsilon + g_gen + g_ext"),
    ]
    width = max(len(r[0]) for r in rows)
    lines.append(f"{'term':<{width}}  {'value':>10}  meaning")
    lines.append(f"{'-' * width}  {'-' * 10}  {'-' * 40}")
    lines += [f"{name:<{width}}  {value:>10.6f}  {meaning}" for name, value, meaning in rows]
    lines.append("")
    setting = [
      f"n={self.n}",
      f"num_params={self.num_params if self.num_params is not None else '?'}",
      f"sigma_q={_fmt(self.sigma_q)}",
      f"sigma_p={_fmt(self.sigma_p)}",
      f"grid k={self.grid_size}",
    ]
    lines.append("setting: " + ", ".join(setting))
    if self.baselines:
      others = ", ".join(f"{m} {v:.6f}" for m, v in self.baselines.items())
      lines.append(f"whole bound by g_gen method: {others}")
    if self.g_ext_kind == "estimate":
      lines.append("NOTE: g_ext is an estimate; the total is an estimate, not a guarantee.")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.to_table()


def _fmt(value: float | None) -> str:
  return "?" if value is None else f"{value:.6g}"


# --------------------------------------------------------------------------------------------
# Assembly.


def _split_delta(
  delta, delta_split, delta_mc, delta_pb, delta_ext, g_ext_kind
) -> tuple[float, float, float, float]:
  explicit = any(d is not None for d in (delta_mc, delta_pb, delta_ext))
  if explicit:
    _require(
      delta_split is None, "give either delta_split or delta_mc/delta_pb/delta_ext, not both."
    )
    if delta_ext is None and g_ext_kind == "none":
      delta_ext = 0.0
    for name, value in (("delta_mc", delta_mc), ("delta_pb", delta_pb), ("delta_ext", delta_ext)):
      _require(value is not None, f"{name} is required when the delta parts are given explicitly.")
    parts = [
      _real(delta_mc, "delta_mc"),
      _real(delta_pb, "delta_pb"),
      _real(delta_ext, "delta_ext"),
    ]
    total = math.fsum(parts)
    if delta is None:
      delta = total
    else:
      delta = _real(delta, "delta")
      _require(
        math.isclose(delta, total, rel_tol=1e-12, abs_tol=0.0),
        f"delta {delta!r} != delta_mc + delta_pb + delta_ext = {total!r}.",
      )
  else:
    delta = 0.05 if delta is None else _real(delta, "delta")
    _require(0.0 < delta < 1.0, f"delta must be in (0, 1); got {delta!r}.")
    if delta_split is None:
      delta_split = (0.5, 0.5, 0.0) if g_ext_kind == "none" else (1 / 3, 1 / 3, 1 / 3)
    split = [_real(f, "delta_split") for f in delta_split]
    if len(split) == 2:
      split.append(0.0)
    _require(
      len(split) == 3, f"delta_split must have 2 or 3 entries (mc, pb[, ext]); got {delta_split!r}."
    )
    _require(all(f >= 0 for f in split), f"delta_split entries must be >= 0; got {delta_split!r}.")
    _require(
      abs(math.fsum(split) - 1.0) <= 1e-9, f"delta_split must sum to 1; got {delta_split!r}."
    )
    parts = [delta * f for f in split]
  delta_mc, delta_pb, delta_ext = parts
  _require(delta_mc > 0, f"delta_mc must be > 0; got {delta_mc!r}.")
  _require(delta_pb > 0, f"delta_pb must be > 0; got {delta_pb!r}.")
  _require(delta_ext >= 0, f"delta_ext must be >= 0; got {delta_ext!r}.")
  _require(0.0 < delta < 1.0, f"delta must be in (0, 1); got {delta!r}.")
  _require(
    g_ext_kind != "none" or delta_ext == 0.0,
    f"g_ext_kind 'none' spends no confidence on g_ext, so delta_ext must be 0; got {delta_ext!r}.",
  )
  return delta, delta_mc, delta_pb, delta_ext


def _gen_upper(method: str, a: float, kl: float, n: int, delta_pb: float, k: int, lam) -> float:
  """Upper bound on E_Q[R_train] given an upper value ``a`` of E_Q[R_S]."""
  if method == "maurer":
    c = (kl + math.log(2.0 * math.sqrt(n) / delta_pb) + math.log(k)) / n
    return float(bounds.kl_inv_upper(a, c))
  # Union bound over the k prior scales: confidence delta_pb / k for each.
  d = delta_pb / k
  if method == "mcallester":
    return float(bounds.mcallester(a, kl, n, d))
  if method == "catoni":
    return float(bounds.catoni(a, kl, n, d))
  if method == "fquad":
    return float(bounds.fquad(a, kl, n, d))
  if lam is None:
    lam = bounds.flamb_optimal_lam(a, kl, n, d)
  return float(bounds.flamb(a, kl, n, d, lam))


def certify(
  emp_risk: float,
  num_mc: int,
  kl: float,
  n: int,
  *,
  g_ext: float = 0.0,
  g_ext_kind: str = "none",
  delta: float | None = None,
  delta_split: Sequence[float] | None = None,
  delta_mc: float | None = None,
  delta_pb: float | None = None,
  delta_ext: float | None = None,
  grid_size: int = 1,
  method: str = "maurer",
  lam: float | None = None,
  sigma_q: float | None = None,
  sigma_p: float | None = None,
  num_params: int | None = None,
  loss: str = "token_error",
  extra: Mapping[str, Any] | None = None,
) -> Certificate:
  """Assembles the two-gap bound of Proposition 4.1 from its measured ingredients.

  With probability at least ``1 - delta``, ``E_Q[R_test] <= emp + epsilon + g_gen + g_ext``:

    epsilon = kl_inv_upper(emp, ln(2/delta_mc)/M) - emp                 (Langford & Caruana)
    g_gen   = kl_inv_upper(emp + epsilon, (KL + ln(2 sqrt(n)/delta_pb) + ln k)/n)
              - (emp + epsilon)                                          (Maurer)
    g_ext   = an upper value for TV(D_test, D_train), given by the caller.

  With ``method`` other than "maurer", ``g_gen`` is that bound (run at confidence
  ``delta_pb / k``, the same union bound) minus ``emp + epsilon``. The whole bound under every
  method is stored in ``baselines``.

  Args:
    emp_risk: Monte-Carlo mean of the loss under posterior draws, in [0, 1].
    num_mc: number M of independent [0, 1]-valued draws behind ``emp_risk`` (full passes over
      S, or chunks of S each with its own posterior draw).
    kl: KL(Q || P) in nats (finite, >= 0).
    n: training-set size (>= 1).
    g_ext: extrapolation term in [0, 1]; must be 0 when ``g_ext_kind`` is "none".
    g_ext_kind: "certified under difficulty shift", "estimate" or "none".
    delta: total failure probability in (0, 1); default 0.05 (or the sum of explicit parts).
    delta_split: fractions (mc, pb, ext) of ``delta``, summing to 1; default equal thirds,
      or (1/2, 1/2, 0) when ``g_ext_kind`` is "none". Two entries mean ext = 0.
    delta_mc: explicit Monte-Carlo share (with ``delta_pb`` and ``delta_ext``, instead of a
      split).
    delta_pb: explicit PAC-Bayes share.
    delta_ext: explicit share of the extrapolation term (0 / omitted when kind is "none").
    grid_size: number k of prior scales the prior was chosen from (ln k is added).
    method: "maurer" (default), "mcallester", "catoni", "fquad" or "flamb".
    lam: lambda for "flamb" (None: its closed-form optimum; flamb holds for all lambda at once).
    sigma_q: posterior scale, for the record.
    sigma_p: prior scale, for the record.
    num_params: number of perturbed parameters, for the record.
    loss: the loss name, for the record.
    extra: JSON-serialisable details to keep with the certificate.

  Returns:
    A Certificate; ``bound == emp_risk + epsilon + g_gen + g_ext`` exactly.

  Raises:
    ValueError: naming the argument, for out-of-range inputs or an inconsistent delta split.

  References:
    Proposition 4.1 of "Data Difficulty and the Generalization-Extrapolation Tradeoff in LLM
    Fine-Tuning" (arXiv 2605.12906); Langford & Caruana, "(Not) bounding the true error",
    NIPS 2001; Maurer, "A note on the PAC Bayesian theorem", 2004.
  """
  emp_risk = _real(emp_risk, "emp_risk")
  _require(0.0 <= emp_risk <= 1.0, f"emp_risk must be in [0, 1]; got {emp_risk!r}.")
  num_mc = _integer(num_mc, "num_mc", 1)
  _require(
    isinstance(kl, numbers.Real) and not math.isnan(kl) and kl >= 0,
    f"kl must be a number >= 0; got {kl!r}.",
  )
  _require(math.isfinite(kl), "kl is infinite (a moved parameter is not perturbed): no bound.")
  kl = float(kl)
  n = _integer(n, "n", 1)
  _require(
    g_ext_kind in G_EXT_KINDS, f"g_ext_kind must be one of {G_EXT_KINDS}; got {g_ext_kind!r}."
  )
  g_ext = _real(g_ext, "g_ext")
  _require(0.0 <= g_ext <= 1.0, f"g_ext must be in [0, 1] (a TV distance); got {g_ext!r}.")
  _require(
    g_ext_kind != "none" or g_ext == 0.0,
    f"g_ext_kind is 'none' but g_ext = {g_ext!r}; give the kind of the g_ext value.",
  )
  delta, delta_mc, delta_pb, delta_ext = _split_delta(
    delta, delta_split, delta_mc, delta_pb, delta_ext, g_ext_kind
  )
  grid_size = _integer(grid_size, "grid_size", 1)
  _require(method in METHODS, f"method must be one of {METHODS}; got {method!r}.")
  if lam is not None:
    lam = _real(lam, "lam")
    _require(method == "flamb", "lam is used only with method='flamb'.")
    _require(0.0 < lam < 2.0, f"lam must be in (0, 2); got {lam!r}.")
  for name, value in (("sigma_q", sigma_q), ("sigma_p", sigma_p)):
    if value is not None:
      _require(_real(value, name) > 0, f"{name} must be > 0; got {value!r}.")
  sigma_q = None if sigma_q is None else float(sigma_q)
  sigma_p = None if sigma_p is None else float(sigma_p)
  num_params = None if num_params is None else _integer(num_params, "num_params", 0)
  _require(isinstance(loss, str) and bool(loss), f"loss must be a non-empty name; got {loss!r}.")
  try:
    extra = json.loads(json.dumps(dict(extra or {}), allow_nan=False))
  except (TypeError, ValueError) as e:
    raise ValueError(f"extra must be JSON-serialisable with finite numbers ({e}).") from None

  epsilon = float(bounds.kl_inv_upper(emp_risk, math.log(2.0 / delta_mc) / num_mc)) - emp_risk
  a = emp_risk + epsilon
  # emp + (p - emp) can round one ulp above p <= 1; the bounds need a risk in [0, 1].
  a_in = min(a, 1.0)
  uppers = {
    m: _gen_upper(m, a_in, kl, n, delta_pb, grid_size, lam if m == "flamb" else None)
    for m in METHODS
  }
  g_gen = uppers[method] - a
  baselines = {m: emp_risk + epsilon + (u - a) + g_ext for m, u in uppers.items()}
  return Certificate(
    n=n,
    num_params=num_params,
    sigma_q=sigma_q,
    sigma_p=sigma_p,
    kl=kl,
    emp_risk=emp_risk,
    num_mc=num_mc,
    epsilon=epsilon,
    g_gen=g_gen,
    g_ext=g_ext,
    g_ext_kind=g_ext_kind,
    bound=emp_risk + epsilon + g_gen + g_ext,
    delta=delta,
    delta_mc=delta_mc,
    delta_pb=delta_pb,
    delta_ext=delta_ext,
    grid_size=grid_size,
    loss=loss,
    method=method,
    baselines=baselines,
    extra=extra,
  )
