"""Tests for pacbayes.certificate: Proposition 4.1 terms, delta split, JSON and table."""

import json
import math
import os

import mpmath
import pytest

from pacbayes import certificate as certm
from pacbayes.certificate import G_EXT_KINDS, METHODS, Certificate, certify

REPORT_KEYS = (
  "n num_params sigma_q sigma_p kl emp_risk epsilon g_gen g_ext g_ext_kind bound delta loss"
).split()


def mp_kl(q, p):
  q, p = mpmath.mpf(q), mpmath.mpf(p)
  out = mpmath.mpf(0)
  if q > 0:
    out += q * mpmath.log(q / p)
  if q < 1:
    out += (1 - q) * mpmath.log((1 - q) / (1 - p))
  return out


def mp_kl_inv_upper(q, c):
  """sup{p in [q, 1]: kl(q||p) <= c} by bisection in 50-digit arithmetic."""
  with mpmath.workdps(50):
    lo, hi = mpmath.mpf(q), mpmath.mpf(1)
    if mp_kl(q, hi - mpmath.mpf(10) ** -45) <= c:
      return 1.0
    for _ in range(200):
      mid = (lo + hi) / 2
      if mp_kl(q, mid) <= c:
        lo = mid
      else:
        hi = mid
    return float(lo)


CASES = [
  # emp_risk, M, kl, n, g_ext, kind, k
  (0.12, 64, 5000.0, 20000, 0.08, "certified under difficulty shift", 10),
  (0.0, 1, 0.0, 1, 0.0, "none", 1),
  (0.3, 500, 12.5, 800, 0.2, "estimate", 3),
  (0.5, 10, 1e6, 100, 0.0, "none", 1),
  (0.97, 32, 3.0, 10**6, 1.0, "certified under difficulty shift", 25),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_terms_add_up_exactly(case, method):
  emp, m, kl, n, g_ext, kind, k = case
  c = certify(emp, m, kl, n, g_ext=g_ext, g_ext_kind=kind, grid_size=k, method=method)
  assert c.bound == c.emp_risk + c.epsilon + c.g_gen + c.g_ext
  d = c.to_dict()
  assert d["bound"] == d["emp_risk"] + d["epsilon"] + d["g_gen"] + d["g_ext"]
  assert c.epsilon >= 0 and c.g_gen >= 0
  assert c.baselines[method] == c.bound
  assert c.vacuous == (c.bound >= 1.0)
  assert math.isclose(c.delta_mc + c.delta_pb + c.delta_ext, c.delta, rel_tol=1e-15)


@pytest.mark.parametrize("case", CASES)
def test_epsilon_and_g_gen_match_mpmath(case):
  emp, m, kl, n, g_ext, kind, k = case
  c = certify(emp, m, kl, n, g_ext=g_ext, g_ext_kind=kind, grid_size=k, delta=0.1)
  third = 0.5 if kind == "none" else 1 / 3
  assert math.isclose(c.delta_mc, 0.1 * third) and math.isclose(c.delta_pb, 0.1 * third)
  eps = mp_kl_inv_upper(emp, math.log(1 / c.delta_mc) / m) - emp
  a = emp + eps
  budget = (kl + math.log(2 * math.sqrt(n) / c.delta_pb) + math.log(k)) / n
  g_gen = mp_kl_inv_upper(a, budget) - a
  assert c.epsilon == pytest.approx(eps, abs=1e-10)
  assert c.g_gen == pytest.approx(g_gen, abs=1e-10)
  assert c.bound == pytest.approx(emp + eps + g_gen + g_ext, abs=1e-9)


def test_mcallester_matches_closed_form_and_is_looser():
  c = certify(0.1, 100, 40.0, 5000, method="mcallester", grid_size=4, delta=0.05)
  a = c.emp_risk + c.epsilon
  want = math.sqrt((40.0 + math.log(2 * math.sqrt(5000) / c.delta_pb) + math.log(4)) / 10000)
  assert c.g_gen == pytest.approx(want, rel=1e-12)
  assert c.baselines["maurer"] <= c.baselines["mcallester"]
  assert c.bound == pytest.approx(a + want, rel=1e-12)


def test_monotone_in_draws_grid_and_kl():
  base = dict(emp_risk=0.2, num_mc=50, kl=100.0, n=4000)
  c = certify(**base)
  assert certify(**dict(base, num_mc=500)).epsilon < c.epsilon
  assert certify(**base, grid_size=30).g_gen > c.g_gen
  assert certify(**dict(base, kl=200.0)).g_gen > c.g_gen
  assert certify(**dict(base, n=40000)).g_gen < c.g_gen


def test_delta_split_defaults_and_explicit_parts():
  c = certify(0.1, 10, 1.0, 100, g_ext=0.1, g_ext_kind="estimate")
  assert c.delta == 0.05 and c.delta_mc == c.delta_pb == c.delta_ext == 0.05 / 3
  c = certify(0.1, 10, 1.0, 100)
  assert (c.delta_mc, c.delta_pb, c.delta_ext) == (0.025, 0.025, 0.0)
  c = certify(0.1, 10, 1.0, 100, delta=0.1, delta_split=(0.2, 0.8))
  assert (c.delta_mc, c.delta_pb, c.delta_ext) == pytest.approx((0.02, 0.08, 0.0))
  c = certify(0.1, 10, 1.0, 100, delta_mc=0.01, delta_pb=0.03)
  assert (c.delta, c.delta_ext) == (0.04, 0.0)
  c = certify(
    0.1,
    10,
    1.0,
    100,
    g_ext=0.1,
    g_ext_kind="certified under difficulty shift",
    delta=0.06,
    delta_mc=0.01,
    delta_pb=0.02,
    delta_ext=0.03,
  )
  assert (c.delta_mc, c.delta_pb, c.delta_ext) == (0.01, 0.02, 0.03)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    (dict(delta=0.0), "delta must be in"),
    (dict(delta=1.0), "delta must be in"),
    (dict(delta_split=(0.5, 0.6, 0.0)), "delta_split must sum to 1"),
    (dict(delta_split=(1.2, -0.2)), "delta_split entries must be >= 0"),
    (dict(delta_split=(0.25, 0.25, 0.25, 0.25)), "delta_split must have 2 or 3"),
    (dict(delta_split=(1.0, 0.0)), "delta_pb must be > 0"),
    (dict(delta_split=(0.4, 0.3, 0.3)), "'none'.*delta_ext must be 0"),
    (dict(delta_mc=0.01, delta_pb=0.01, delta_ext=0.01), "'none'.*delta_ext must be 0"),
    (dict(delta_mc=0.01), "delta_pb is required"),
    (dict(delta_mc=0.01, delta_pb=0.01, delta=0.05), r"delta 0.05 != delta_mc \+ delta_pb"),
    (dict(delta_mc=0.01, delta_pb=0.01, delta_split=(0.5, 0.5)), "either delta_split or"),
    (dict(delta_mc=0.6, delta_pb=0.6), "delta must be in"),
  ],
)
def test_delta_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    certify(0.1, 10, 1.0, 100, **kwargs)


def test_explicit_parts_need_delta_ext_with_a_g_ext():
  with pytest.raises(ValueError, match="delta_ext is required"):
    certify(0.1, 10, 1.0, 100, g_ext=0.1, g_ext_kind="estimate", delta_mc=0.01, delta_pb=0.01)


@pytest.mark.parametrize(
  ("args", "kwargs", "match"),
  [
    ((1.2, 10, 1.0, 100), {}, "emp_risk must be in"),
    ((-0.1, 10, 1.0, 100), {}, "emp_risk must be in"),
    ((float("nan"), 10, 1.0, 100), {}, "emp_risk must be finite"),
    ((0.1, 0, 1.0, 100), {}, "num_mc must be an integer >= 1"),
    ((0.1, 2.5, 1.0, 100), {}, "num_mc must be an integer"),
    ((0.1, 10, -1.0, 100), {}, "kl must be a number >= 0"),
    ((0.1, 10, float("nan"), 100), {}, "kl must be a number >= 0"),
    ((0.1, 10, float("inf"), 100), {}, "kl is infinite"),
    ((0.1, 10, 1.0, 0), {}, "n must be an integer >= 1"),
    ((0.1, 10, 1.0, 100), dict(g_ext=0.1), "g_ext_kind is 'none' but g_ext"),
    ((0.1, 10, 1.0, 100), dict(g_ext=1.5, g_ext_kind="estimate"), "g_ext must be in"),
    ((0.1, 10, 1.0, 100), dict(g_ext_kind="guess"), "g_ext_kind must be one of"),
    ((0.1, 10, 1.0, 100), dict(method="bernstein"), "method must be one of"),
    ((0.1, 10, 1.0, 100), dict(grid_size=0), "grid_size must be an integer >= 1"),
    ((0.1, 10, 1.0, 100), dict(lam=0.5), "lam is used only with method='flamb'"),
    ((0.1, 10, 1.0, 100), dict(method="flamb", lam=2.0), "lam must be in"),
    ((0.1, 10, 1.0, 100), dict(sigma_q=0.0), "sigma_q must be > 0"),
    ((0.1, 10, 1.0, 100), dict(num_params=-1), "num_params must be an integer >= 0"),
    ((0.1, 10, 1.0, 100), dict(loss=""), "loss must be a non-empty name"),
    ((0.1, 10, 1.0, 100), dict(extra={"x": object()}), "extra must be JSON-serialisable"),
    ((0.1, 10, 1.0, 100), dict(extra={"x": float("inf")}), "extra must be JSON-serialisable"),
  ],
)
def test_input_validation(args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    certify(*args, **kwargs)


def test_flamb_with_given_lambda_is_looser_than_optimal():
  opt = certify(0.1, 100, 50.0, 2000, method="flamb")
  fixed = certify(0.1, 100, 50.0, 2000, method="flamb", lam=1.5)
  assert fixed.g_gen > opt.g_gen
  assert opt.bound == pytest.approx(opt.baselines["fquad"], rel=1e-12)


def full_certificate():
  return certify(
    0.1234567890123,
    37,
    1234.5678901234,
    54321,
    g_ext=0.0987654321,
    g_ext_kind="certified under difficulty shift",
    grid_size=7,
    sigma_q=1.1e-3,
    sigma_p=3.3e-3,
    num_params=123456789,
    loss="smoothed_nll",
    extra={"tv": {"buckets": [0.2, 0.3, 0.5], "weissman": (0.01, 0.02)}, "note": "x"},
  )


def test_json_round_trip_is_exact(tmp_path):
  c = full_certificate()
  path = tmp_path / "report.json"
  text = c.to_json(path)
  assert path.read_text() == text
  back = Certificate.from_json(path)
  assert back == c
  for f in ("epsilon", "g_gen", "bound", "kl", "delta_mc"):
    assert getattr(back, f) == getattr(c, f)  # bit-exact floats
  data = json.loads(text)
  assert set(REPORT_KEYS) <= set(data)
  assert data["schema"] == certm.SCHEMA and data["vacuous"] is False
  assert data["extra"]["tv"]["weissman"] == [0.01, 0.02]
  assert Certificate.from_dict(c.to_dict()) == c
  assert os.listdir(tmp_path) == ["report.json"]  # no temporary file left behind


def test_json_write_is_atomic(tmp_path, monkeypatch):
  path = tmp_path / "report.json"
  first = certify(0.1, 10, 1.0, 100)
  first.to_json(path)
  before = path.read_text()

  def broken_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(certm.os, "replace", broken_replace)
  with pytest.raises(OSError, match="disk full"):
    full_certificate().to_json(path)
  assert path.read_text() == before
  assert os.listdir(tmp_path) == ["report.json"]


def test_from_json_refusals(tmp_path):
  with pytest.raises(ValueError, match="missing.json: cannot read certificate"):
    Certificate.from_json(tmp_path / "missing.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{\n  'n': 3\n")
  with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
    Certificate.from_json(bad)
  data = full_certificate().to_dict()
  for change, match in [
    ({"bound": data["bound"] + 1e-12}, "bound .* != emp_risk \\+ epsilon"),
    ({"schema": "other/2"}, "schema 'other/2' is not"),
    ({"surprise": 1}, r"unknown keys \['surprise'\]"),
    ({"g_ext_kind": "maybe"}, "g_ext_kind must be one of"),
    ({"vacuous": True}, "'vacuous' disagrees"),
  ]:
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(dict(data, **change)))
    with pytest.raises(ValueError, match=f"edited.json: {match}"):
      Certificate.from_json(path)
  path.write_text(json.dumps({k: v for k, v in data.items() if k != "kl"}))
  with pytest.raises(ValueError, match=r"edited.json: missing keys \['kl'\]"):
    Certificate.from_json(path)


@pytest.mark.parametrize("kind", G_EXT_KINDS)
def test_table_names_terms_and_kind(kind):
  g_ext = 0.0 if kind == "none" else 0.15
  c = certify(0.2, 40, 300.0, 10000, g_ext=g_ext, g_ext_kind=kind, sigma_q=0.01, sigma_p=0.02)
  table = c.to_table()
  for term in ("emp_risk", "epsilon", "g_gen", "g_ext", "bound", kind, "maurer", "mcallester"):
    assert term in table
  assert f"{c.bound:.6f}" in table and f"{c.g_gen:.6f}" in table
  assert ("ESTIMATE" in table) == (kind == "estimate")
  assert "VACUOUS" not in table
  assert str(c) == table


def test_vacuous_bound_is_flagged_not_capped():
  c = certify(0.6, 5, 5e4, 1000, g_ext=0.5, g_ext_kind="estimate")
  assert c.bound > 1.0 and c.vacuous
  assert c.bound == c.emp_risk + c.epsilon + c.g_gen + c.g_ext
  assert "VACUOUS" in c.to_table()
