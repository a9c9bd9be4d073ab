"""Certifiability before compute: `pacbayes.bounds.feasibility` and its use by the route."""

import math

import jax
import mpmath
import pytest

from pacbayes.bounds.btrain import maurer_upper
from pacbayes.bounds.delta import DeltaPlan
from pacbayes.bounds.feasibility import best_possible_bound
from pacbayes.certificate import route
from pacbayes.certificate.core import certify
from pacbayes.pipeline import run as pipeline
from pacbayes.posterior.kl import isotropic_kl
from tests.helpers.toy import toy, zero_one


@pytest.mark.parametrize("sq, d, n, grid", [
    (23.0, 13_300_000, 300, [1e-3, 3e-3, 1e-2, 3e-2, 0.1]),
    (1e-4, 1000, 3000, [1e-4, 1e-3, 1e-2]),
    (207.0, 137_536, 3200, [1e-3, 1e-2]),
    (0.5, 10, 50, [0.3]),
])
def test_best_possible_bound_is_the_risk_zero_certificate_at_each_kl_floor(sq, d, n, grid):
  plan = DeltaPlan.for_kinds(0.05)
  k = len(grid)
  f = best_possible_bound(sq, d, n, plan["pb"], grid)
  for j, s_p in enumerate(grid):
    floor = sq / (2 * s_p**2)
    assert f.kl_floor[j] == pytest.approx(floor, rel=1e-15)
    # Closed form at risk 0: kl_inv_upper(0, c) = 1 - exp(-c), c the Maurer budget (mpmath).
    c = (mpmath.mpf(floor) + mpmath.log(2 * mpmath.sqrt(n) / plan["pb"]) + mpmath.log(k)) / n
    assert f.floor_bounds[j] == pytest.approx(float(1 - mpmath.exp(-c)), rel=1e-9, abs=1e-15)
    # The certificate at that grid point with empirical risk 0 and M -> infinity reaches it...
    cert = certify(0.0, 10**12, floor, n, deltas=plan, grid_size=k)
    assert cert.b_train >= f.floor_bounds[j]
    assert cert.b_train == pytest.approx(f.floor_bounds[j], rel=1e-6, abs=1e-9)
    # ... and no sigma_q does better: the KL is smallest at sigma_q = sigma_p.
    for r in (0.5, 0.9, 1.1, 2.0):
      kl = float(isotropic_kl(sq, d, math.sqrt(r) * s_p, s_p))
      assert kl >= floor
      assert certify(0.0, 10**12, kl, n, deltas=plan, grid_size=k).b_train >= f.floor_bounds[j]
  assert f.best_possible_bound == min(f.floor_bounds)
  assert f.sigma_p == max(grid)  # the smallest KL floor (also on a tie of saturated values)
  assert f.futile == (f.best_possible_bound >= 0.99)
  if f.sigma_fit is not None:  # at sigma_fit the floor equals kl_fit and B_train = 0.99
    kl = sq / (2 * f.sigma_fit**2)
    assert kl == pytest.approx(f.kl_fit, rel=1e-9)
    at = [maurer_upper(0.0, sq / (2 * (f.sigma_fit * x) ** 2), n, plan["pb"], k)
          for x in (0.9999, 1.0001)]
    assert at[0] >= 0.99 > at[1]


def test_refusals():
  for kw, match in (({"sigma_grid": []}, "sigma_grid"), ({"sq_distance": -1.0}, "sq_distance"),
                    ({"n": 0}, "n"), ({"delta_pb": 1.0}, "delta_pb")):
    args = {**dict(sq_distance=1.0, num_params=3, n=10, delta_pb=0.01, sigma_grid=[0.1]), **kw}
    with pytest.raises(ValueError, match=match):
      best_possible_bound(**args)


# ------------------------------------------------------------------------ through the route


FAST = dict(chunk_size=8, batch_size=8, progress=False)


def test_best_possible_bound_is_recorded_and_never_above_the_reported_bound():
  post, data = toy()
  prior = {"w": post["w"] * 0.9}
  cert = pipeline.certify_params(zero_one, prior, post, data, key=jax.random.key(0),
                                 sigma_q=0.05, sigma_grid=[0.1, 0.3, 1.0, 3.0], **FAST)
  assert cert.best_possible_bound is not None
  assert cert.best_possible_bound <= cert.b_train <= cert.bound
  feas = cert.extra["feasibility"]
  assert not feas["futile"] and feas["best_possible_bound"] == cert.best_possible_bound
  # Every grid point's certificate is at or above its own floor.
  for g, floor in zip(cert.extra["per_grid"], feas["floor_bounds"], strict=True):
    assert floor <= g["b_train"]
  assert "best possible bound" in cert.to_table()


def test_a_futile_pair_skips_the_search_and_still_reports_the_fine_tunes_risk(monkeypatch,
                                                                                capsys):
  post, data = toy()
  prior = {"w": post["w"] + 100.0}  # ||dw||^2 = 4e4: KL floor 2e4 nats at sigma_p = 1, n = 64

  def no_search(*args, **kwargs):
    raise AssertionError("the sigma search must not run on a futile grid")

  monkeypatch.setattr(route, "choose_sigma", no_search)
  grid = [0.01, 0.1, 1.0]
  cert = pipeline.certify_params(zero_one, prior, post, data, key=jax.random.key(0),
                                 sigma_grid=grid, **FAST)
  err = capsys.readouterr().err
  assert "NOT CERTIFIABLE" in err and "KL floor" in err  # said even without progress output
  assert cert.best_possible_bound >= 0.99 and cert.extra["feasibility"]["futile"]
  assert cert.best_possible_bound <= cert.b_train
  assert cert.sigma_q == min(grid)  # a vacuous tie never picks the noise that kills the model
  assert cert.extra["sigma_search"]["how"].startswith("skipped")
  assert cert.extra["unperturbed_risk"] == 0.0  # the fine-tune's own risk is still measured
  d = cert.to_dict()
  assert d["g_gen"] is None and d["g_gen_status"] == "saturated"
  table = cert.to_table()
  assert "fine-tune's own risk" in table and "NOT CERTIFIABLE" in table
  g_gen_line = next(line for line in table.splitlines() if line.startswith("g_gen"))
  assert "saturated" in g_gen_line
