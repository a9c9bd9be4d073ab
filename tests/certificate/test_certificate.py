"""Tests for pacbayes.certificate: Proposition 4.1 terms, the delta plan, JSON and table."""

import json
import math
import os

import numpy as np
import pytest

from pacbayes.bounds import extrapolation as ext
from pacbayes.bounds import mixture as mixtures
from pacbayes.bounds.delta import DeltaPlan
from pacbayes.certificate import core as certm
from pacbayes.certificate import report as reportm
from pacbayes.certificate.core import G_EXT_KINDS, METHODS, Certificate, Record, ShiftInputs
from pacbayes.certificate.core import certify as certify_new
from tests.helpers.mp_reference import mp_inv_upper

RECORD_KEYS = ("sigma_q", "sigma_p", "num_params", "loss", "loss_options", "extra", "notes")


def certify(emp_risk, num_mc, kl, n, *, g_ext=0.0, g_ext_kind="none", delta=None, delta_mc=None,
            delta_pb=None, delta_ext=None, mixture=None, extrapolation=(), grid_size=1,
            method="maurer", lam=None, **record):
  """`certify` with the shift inputs, explicit delta parts and record fields as keywords."""
  if delta_mc is not None:
    parts = [("mc", delta_mc), ("pb", delta_pb)]
    if delta_ext:
      parts.append(("tv", delta_ext))
    if mixture is not None and mixture.delta:
      parts.append(("mixture", mixture.delta))
    parts += [p for k in extrapolation for p in k.delta_parts]
    deltas = DeltaPlan(tuple(parts))
    if delta is not None:
      assert math.isclose(deltas.delta, delta)
  else:
    deltas = delta
  assert set(record) <= set(RECORD_KEYS), record
  return certify_new(emp_risk, num_mc, kl, n, deltas=deltas,
                     shift=ShiftInputs(g_ext=g_ext, g_ext_kind=g_ext_kind, mixture=mixture,
                                       extrapolation=tuple(extrapolation)),
                     grid_size=grid_size, method=method, lam=lam, record=Record(**record))

REPORT_KEYS = (
  "n num_params sigma_q sigma_p kl emp_risk epsilon g_gen g_ext g_ext_kind bound delta loss"
).split()


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
  terms = d["raw_terms"]
  assert d["bound"] == d["emp_risk"] + d["epsilon"] + terms["g_gen"] + terms["g_ext"]
  # A term that only fills the gap to 1 is null with a status, never a number.
  assert (d["g_gen"] is None) == (c.b_train >= 1.0) == (d["g_gen_status"] == "saturated")
  assert (d["g_ext"] is None) == (d["g_ext_status"] == "vacuous")
  assert all(v <= 1.0 for v in d["baselines"].values())
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
  eps = float(mp_inv_upper(emp, math.log(1 / c.delta_mc) / m)) - emp
  a = emp + eps
  budget = (kl + math.log(2 * math.sqrt(n) / c.delta_pb) + math.log(k)) / n
  g_gen = float(mp_inv_upper(a, budget)) - a
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


def test_delta_defaults_and_explicit_parts():
  c = certify(0.1, 10, 1.0, 100, g_ext=0.1, g_ext_kind="estimate")
  assert c.delta == 0.05 and c.delta_mc == c.delta_pb == 0.05 / 3
  assert c.delta_ext == pytest.approx(0.05 / 3, rel=1e-15)
  c = certify(0.1, 10, 1.0, 100)
  assert (c.delta_mc, c.delta_pb, c.delta_ext) == (0.025, 0.025, 0.0)
  c = certify_new(0.1, 10, 1.0, 100, deltas=DeltaPlan.equal(0.1, ["mc", "pb"], {"pb": 4.0}))
  assert (c.delta_mc, c.delta_pb, c.delta_ext) == pytest.approx((0.02, 0.08, 0.0))
  c = certify(0.1, 10, 1.0, 100, delta_mc=0.01, delta_pb=0.03)
  assert (c.delta, c.delta_ext) == (0.04, 0.0)
  c = certify(0.1, 10, 1.0, 100, g_ext=0.1, g_ext_kind="certified under difficulty shift",
              delta=0.06, delta_mc=0.01, delta_pb=0.02, delta_ext=0.03)
  assert (c.delta_mc, c.delta_pb, c.delta_ext) == (0.01, 0.02, 0.03)
  assert dict(c.delta_parts) == {"mc": 0.01, "pb": 0.02, "tv": 0.03}


@pytest.mark.parametrize(
  ("deltas", "match"),
  [
    (0.0, "delta must be in"),
    (1.0, "delta must be in"),
    (lambda: DeltaPlan((("mc", 0.01), ("pb", 0.01), ("tv", 0.01))), "'tv' part needs a g_ext"),
    (lambda: DeltaPlan((("mc", 0.01), ("pb", 0.01), ("slice_mc", 0.01))),
     r"parts \['slice_mc'\] are spent by no kind"),
  ],
)
def test_delta_validation(deltas, match):
  with pytest.raises(ValueError, match=match):
    certify_new(0.1, 10, 1.0, 100, deltas=deltas() if callable(deltas) else deltas)


@pytest.mark.parametrize(
  ("parts", "match"),
  [
    ((("mc", 0.01),), "the 'pb' part is required"),
    ((("mc", 0.01), ("pb", 0.0)), "'pb' must be in"),
    ((("mc", 0.6), ("pb", 0.6)), "not below 1"),
    ((("mc", 0.01), ("pb", 0.01), ("extra", 0.01)), "unknown names"),
    ((("mc", 0.01), ("pb", 0.01), ("mc", 0.01)), "repeated names"),
  ],
)
def test_delta_plan_refusals(parts, match):
  with pytest.raises(ValueError, match=match):
    DeltaPlan(parts)


def test_delta_plan_sums_exactly_and_names_the_kinds_parts():
  for delta in (0.05, 0.1, 1e-3, 0.3):
    for kw in ({}, {"tv": True}, {"mixture": True, "per_slice": True},
               {"tv": True, "mixture": True, "weighted": True, "per_slice": True}):
      plan = DeltaPlan.for_kinds(delta, **kw)
      assert plan.delta == delta  # exactly
      assert math.fsum(plan.as_dict().values()) == delta
  plan = DeltaPlan.for_kinds(0.05, weighted=True, per_slice=True)
  assert plan.names == ("mc", "pb", "weighted_mc", "weighted_pb", "slice_mc", "slice_pb")
  assert plan.spent_by("per_slice") == ("slice_mc", "slice_pb")
  assert plan.spent_by("b_train") == ("mc", "pb") and plan.spent_by("tv") == ()
  assert plan.has_kind("weighted") and not DeltaPlan.for_kinds(0.05).has_kind("weighted")
  merged = DeltaPlan.for_kinds(0.05, tv=True, mixture=True, per_slice=True).merged(
      ("mixture", "slice_mc", "slice_pb"), into="tv")
  assert merged.names == ("mc", "pb", "tv") and merged.delta == pytest.approx(0.05, abs=1e-17)


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

  monkeypatch.setattr(reportm.os, "replace", broken_replace)
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
    ({"schema": "other/2"}, "key 'schema': 'other/2' is not"),
    ({"surprise": 1}, r"unknown keys \['surprise'\]"),
    ({"g_ext_kind": "maybe"}, "g_ext_kind must be one of"),
    ({"vacuous": True}, "key 'vacuous': 'vacuous' disagrees"),
    ({"b_train_non_vacuous": False}, "key 'b_train_non_vacuous'"),
    ({"bound": None}, "key 'bound': expected a finite number, got null"),
    ({"kl": "12.5"}, "key 'kl': expected a finite number, got \"12.5\""),
    ({"n": 2.5}, "key 'n': expected an integer, got 2.5"),
    ({"sigma_q": "x"}, "key 'sigma_q': expected a finite number or null"),
    ({"notes": "one"}, "key 'notes': expected a list"),
    ({"notes": [3]}, r"key 'notes\[0\]': expected a string"),
    ({"saturated": None}, "key 'saturated': expected true or false, got null"),
    ({"delta_parts": [["mc", None]]}, r"key 'delta_parts\[0\]': expected \[name, number\]"),
    ({"extrapolation": [{"name": "tv"}]}, r"key 'extrapolation\[0\].kind': missing"),
    ({"baselines": {"maurer": None}}, r"key 'baselines.maurer': expected a finite number"),
    ({"b_train": 0.5}, "b_train 0.5 != emp_risk"),
  ]:
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(dict(data, **change)))
    with pytest.raises(ValueError, match=f"edited.json: {match}"):
      Certificate.from_json(path)
  path.write_text(json.dumps({k: v for k, v in data.items() if k != "kl"}))
  with pytest.raises(ValueError, match=r"edited.json: missing keys \['kl'\]"):
    Certificate.from_json(path)


@pytest.mark.parametrize("kind", [k for k in G_EXT_KINDS if k != ext.KIND_MIXTURE])
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


# ---------------------------------------------------------------------------------------------
# Schema 2: B_train, extrapolation kinds, slices, delta parts, saturation, notes.

V1_REPORT = {  # a cell of the committed quick study (experiments/results/quick), schema 1
  "schema": "pacbayes.certificate/1", "n": 200, "num_params": 4096, "sigma_q": 0.178,
  "sigma_p": 0.178, "kl": 281.98487992375215, "emp_risk": 0.05050239291042089, "num_mc": 200,
  "epsilon": 0.06243505231130569, "g_gen": 0.7548284593617056, "g_ext": 0.8571428571428572,
  "g_ext_kind": "certified under difficulty shift", "bound": 1.7249087617262893,
  "delta": 0.05, "delta_mc": 0.016666666666666666, "delta_pb": 0.016666666666666666,
  "delta_ext": 0.016666666666666666, "grid_size": 9, "loss": "token_error",
  "method": "maurer", "baselines": {"maurer": 1.7249087617262893}, "extra": {},
  "vacuous": True,
}


def mixture_example():
  return mixtures.mixture_bounds(test_mixture=mixtures.uniform_mixture([1, 2, 3, 4]),
                            train_mixture={1: 0.5, 2: 0.5})


def test_b_train_flags_and_kinds_side_by_side():
  mix = mixture_example()
  c = certify(0.05, 400, 20.0, 400, g_ext=mix.tv, g_ext_kind=ext.KIND_TV, delta_mc=0.02,
              delta_pb=0.03, delta_ext=0.0, mixture=mix, grid_size=3,
              notes=["bf16 forward"], loss_options={"alpha": 0.1})
  assert c.b_train == c.emp_risk + c.epsilon + c.g_gen
  assert c.bound == c.emp_risk + c.epsilon + c.g_gen + c.g_ext
  by_name = {k["name"]: k for k in c.extrapolation}
  assert set(by_name) == {"tv", "mixture_shift"}
  assert by_name["tv"]["value"] == c.b_train + mix.tv
  assert by_name["mixture_shift"]["value"] == mixtures.mixture_shift_bound(c.b_train, mix)
  assert by_name["mixture_shift"]["value"] <= by_name["tv"]["value"]
  assert c.g_ext_name == "mixture_shift" and c.g_ext_kind == ext.KIND_MIXTURE
  assert c.bound == pytest.approx(by_name["mixture_shift"]["value"], abs=1e-15)
  # No delta on the exact TV or the exact mixtures; the parts add up to delta.
  assert dict(c.delta_parts) == {"mc": 0.02, "pb": 0.03}
  assert c.delta == 0.05 and c.delta_ext == 0.0
  d = json.loads(c.to_json())
  assert d["schema"] == "pacbayes.certificate/3"
  assert d["non_vacuous"] is (c.bound < 1) and d["b_train_non_vacuous"] is (c.b_train < 1)
  assert d["notes"] == ["bf16 forward"] and d["loss_options"] == {"alpha": 0.1}
  assert Certificate.from_dict(d) == c
  table = c.to_table()
  for text in ("B_train", "certified under mixture shift", "mixture_shift", "<- used",
               "note: bf16 forward", "alpha=0.1", "0.02 mc", "KL/n", "Maurer budget"):
    assert text in table, text


def test_certify_with_shift_computes_the_kinds_the_plan_pays_for():
  from pacbayes.certificate.shift import certify_with_shift

  rng = np.random.default_rng(0)
  n = 400
  diff = rng.choice([1.0, 2.0], size=n)
  losses = (rng.random((n, 1)) < np.where(diff == 1, 0.05, 0.2)[:, None]).astype(float)
  rows = np.arange(n)[:, None]
  mix = mixture_example()
  shift = ShiftInputs(g_ext=mix.tv, g_ext_kind=ext.KIND_TV, mixture=mix, difficulty=diff)
  plan = DeltaPlan.for_kinds(0.05, weighted=True, per_slice=True)
  c = certify_with_shift(float(losses.mean()), n, 15.0, n, deltas=plan, shift=shift,
                         slots=(losses, rows), grid_size=2)
  assert c.delta == 0.05
  assert [k["name"] for k in c.extrapolation] == ["tv", "mixture_shift", "weighted",
                                                  "per_slice"]
  assert [k for k, _ in c.delta_parts] == list(plan.names)
  values = {k["name"]: k["value"] for k in c.extrapolation}
  assert c.g_ext_name == min(values, key=values.get)
  assert [s["difficulty"] for s in c.slices] == [1.0, 2.0]
  assert all(0 < s["bound"] < 1 for s in c.slices)
  # The plan decides the kinds: without slot parts only tv and mixture_shift.
  c2 = certify_with_shift(0.1, n, 15.0, n, deltas=DeltaPlan.for_kinds(0.05), shift=shift)
  assert [k["name"] for k in c2.extrapolation] == ["tv", "mixture_shift"]
  # Slot parts without the arrays: refused, not skipped.
  with pytest.raises(ValueError, match="slot arrays"):
    certify_with_shift(0.1, n, 15.0, n, deltas=plan, shift=shift)
  # Estimated test mixture: the plan's mixture part pays for it.
  mix_s = mixtures.mixture_bounds(test_difficulty=rng.choice([1, 2, 3, 4], 500),
                             train_mixture={1: 0.5, 2: 0.5}, support=[1, 2, 3, 4], delta=0.01)
  plan3 = DeltaPlan((("mc", 0.01), ("pb", 0.01), ("mixture", 0.01), ("slice_mc", 0.01),
                     ("slice_pb", 0.01)))
  c3 = certify_with_shift(0.1, n, 15.0, n, deltas=plan3, slots=(losses, rows),
                          shift=ShiftInputs(mixture=mix_s, difficulty=diff))
  assert dict(c3.delta_parts)["mixture"] == 0.01 and "tv" not in dict(c3.delta_parts)
  assert c3.delta == pytest.approx(0.05, abs=1e-17)
  with pytest.raises(ValueError, match="plan's 'mixture' part is only"):
    certify_with_shift(0.1, n, 15.0, n, deltas=plan, slots=(losses, rows),
                       shift=ShiftInputs(mixture=mix_s, difficulty=diff))


def test_an_estimate_is_not_chosen_over_a_certified_kind():
  mix = mixture_example()
  c = certify(0.05, 400, 20.0, 400, g_ext=0.01, g_ext_kind="estimate", delta_mc=0.01,
              delta_pb=0.01, delta_ext=0.01, mixture=mix)
  assert c.g_ext_name == "mixture_shift"
  c = certify(0.05, 400, 20.0, 400, g_ext=0.01, g_ext_kind="estimate")
  assert c.g_ext_name == "estimate" and "ESTIMATE" in c.to_table()


def test_saturation_is_said_not_hidden():
  c = certify(0.3, 100, 1.7e7, 800)  # the bound hits 1: a small g_gen would mislead
  assert c.saturated and c.b_train >= 1.0 and "has hit 1" in c.saturation
  table = c.to_table()
  g_gen_line = next(line for line in table.splitlines() if line.startswith("g_gen"))
  assert "saturated" in g_gen_line and f"{c.g_gen:.6f}" not in g_gen_line
  assert "SATURATED" in table
  c = certify(0.01, 200, 300.0, 200)  # (KL + ln terms)/n > 1 but B_train < 1
  assert c.saturated and c.b_train < 1.0 and "> 1 nat per example" in c.saturation
  c = certify(0.01, 200, 30.0, 2000)
  assert not c.saturated and c.saturation == ""
  assert Certificate.from_dict(json.loads(c.to_json())) == c


def test_v1_reports_load_converted(tmp_path):
  path = tmp_path / "old.json"
  path.write_text(json.dumps(V1_REPORT))
  c = Certificate.from_json(path)
  assert c.g_ext_kind == ext.KIND_TV and c.g_ext_name == "tv"
  assert c.bound == V1_REPORT["bound"] and c.epsilon == V1_REPORT["epsilon"]
  assert c.b_train == c.emp_risk + c.epsilon + c.g_gen
  assert dict(c.delta_parts) == {"mc": c.delta_mc, "pb": c.delta_pb, "tv": c.delta_ext}
  assert any("converted from pacbayes.certificate/1" in x for x in c.notes)
  assert json.loads(c.to_json())["schema"] == certm.SCHEMA
  for change, match in [({"bound": None}, "key 'bound': expected a finite number, got null"),
                        ({"g_gen": "0.7"}, "key 'g_gen': expected a finite number"),
                        ({"b_train": 0.1}, r"unknown keys \['b_train'\]")]:
    path.write_text(json.dumps(dict(V1_REPORT, **change)))
    with pytest.raises(ValueError, match=f"old.json: {match}"):
      Certificate.from_json(path)
  data = dict(V1_REPORT)
  del data["kl"]
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"old.json: missing keys \['kl'\]"):
    Certificate.from_json(path)


def test_kind_arguments_are_checked():
  mix = mixture_example()
  with pytest.raises(ValueError, match="mixture kind comes from `mixture`"):
    certify(0.1, 10, 1.0, 100, g_ext=0.1, g_ext_kind=ext.KIND_MIXTURE)
  kind = ext.ExtrapolationBound(name="weighted", kind=ext.KIND_MIXTURE, value=0.5, delta=0.01,
                                delta_parts=(("weighted_mc", 0.005), ("weighted_pb", 0.005)))
  with pytest.raises(ValueError, match="need the `mixture`"):
    certify(0.1, 10, 1.0, 100, extrapolation=[kind])
  with pytest.raises(ValueError, match="give a DeltaPlan"):
    certify(0.1, 10, 1.0, 100, delta=0.05, extrapolation=[kind], mixture=mix)
  c = certify(0.1, 10, 1.0, 100, delta_mc=0.02, delta_pb=0.02, extrapolation=[kind],
              mixture=mix)
  assert c.delta == pytest.approx(0.05) and dict(c.delta_parts)["weighted_mc"] == 0.005
  wrong = DeltaPlan((("mc", 0.02), ("pb", 0.02), ("weighted_mc", 0.004),
                     ("weighted_pb", 0.005)))
  with pytest.raises(ValueError, match="is not the plan's"):
    certify_new(0.1, 10, 1.0, 100, deltas=wrong,
                shift=ShiftInputs(mixture=mix, extrapolation=(kind,)))
  with pytest.raises(ValueError, match="notes must be"):
    certify(0.1, 10, 1.0, 100, notes=["two\nlines"])


def test_v2_reports_still_read_and_v3_nulls_restore_exactly():
  c = certify(0.3, 100, 1.7e7, 800, g_ext=0.2, g_ext_kind="estimate")  # saturated, vacuous
  d = c.to_dict()
  assert d["schema"] == certm.SCHEMA == "pacbayes.certificate/3"
  assert d["g_gen"] is None and d["g_ext"] is None
  assert (d["g_gen_status"], d["g_ext_status"]) == ("saturated", "vacuous")
  assert d["baselines"]["fquad"] == 1.0 < d["raw_terms"]["baselines"]["fquad"]
  assert d["maurer_budget"] > d["kl_per_n"] == 1.7e7 / 800
  assert Certificate.from_dict(d) == c
  # A v2 report (numbers for every term, no status keys, no best_possible_bound) reads as is.
  v2 = {k: v for k, v in d.items() if k not in ("raw_terms", "g_gen_status", "g_ext_status",
                                                "kl_per_n", "maurer_budget",
                                                "best_possible_bound")}
  v2.update(schema=certm.SCHEMA_V2, g_gen=c.g_gen, g_ext=c.g_ext, baselines=c.baselines)
  assert Certificate.from_dict(v2) == c
  with pytest.raises(ValueError, match="key 'g_gen': null without its value"):
    Certificate.from_dict(dict(v2, g_gen=None), source="r.json")
