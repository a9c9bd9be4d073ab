"""Float64 without the global x64 flag (`pacbayes.core.precision`).

The test process runs with x64 on (tests/conftest.py), so the end-to-end checks start fresh
interpreters, where nothing has turned it on: importing pacbayes must leave it off, and the
bound arithmetic must still be float64 and bit-identical to a run with x64 on, with no
"Explicitly requested dtype float64 ... truncated" warning (`-W error::UserWarning`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from pacbayes.core.precision import float64_scope, with_float64
from pacbayes.models import ModelConfig
from pacbayes.models.params import hf_shapes

# ------------------------------------------------------------------------------------------
# In process: x64 switched off locally with jax.enable_x64(False).


@with_float64
def _eps_sum(x):
  """1 + eps(float64) as a JAX computation: 1.0 in float32, 1 + 2.2e-16 in float64."""
  return jnp.asarray(x) + jnp.finfo(jnp.float64).eps


def test_with_float64_returns_numpy_float64_when_it_opens_the_scope():
  with jax.enable_x64(False):
    out = _eps_sum(1.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert out == 1.0 + np.finfo(np.float64).eps
    assert not jax.config.jax_enable_x64  # the scope is closed again


def test_with_float64_leaves_results_alone_when_x64_is_on():
  out = _eps_sum(1.0)  # conftest: x64 on
  assert isinstance(out, jax.Array) and out.dtype == jnp.float64


def test_with_float64_keeps_tracers_under_jit_and_grad():
  with jax.enable_x64(False):
    value, grad = jax.jit(jax.value_and_grad(lambda x: _eps_sum(x * x)))(jnp.float32(3.0))
    assert value.dtype == jnp.float64 and float(value) == 9.0 + np.finfo(np.float64).eps
    assert grad.dtype == jnp.float32 and float(grad) == 6.0


def test_float64_scope_as_decorator_opens_the_scope_per_call():
  @float64_scope()
  def dtype_of_default_float():
    return jnp.zeros(()).dtype

  with jax.enable_x64(False):
    assert dtype_of_default_float() == jnp.float64
    assert jnp.zeros(()).dtype == jnp.float32


# ------------------------------------------------------------------------------------------
# Fresh interpreters.

CONFIG = ModelConfig(model_type="llama", vocab_size=40, hidden_size=8, intermediate_size=16,
                     num_hidden_layers=2, num_attention_heads=2)

# Runs every public float64 function once; prints {name: {"type", "dtype", "hex"}} as JSON.
# argv: mode ("plain" or "x64"), prior folder, posterior folder.
SCRIPT = r"""
import json, sys
import jax
import pacbayes
x64_after_import = bool(jax.config.jax_enable_x64)
if sys.argv[1] == "x64":
  jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from pacbayes.bounds import pac
from pacbayes.core.precision import float64_scope
from pacbayes.posterior.kl import checkpoint_kl, gaussian_kl, isotropic_kl

out = {}
def record(name, value):
  arr = np.asarray(value)
  out[name] = {"type": type(value).__name__, "dtype": str(arr.dtype),
               "hex": [float(v).hex() for v in arr.ravel()]}

q = np.array([0.0, 1e-6, 0.1, 0.5, 0.9, 1.0])
c = np.array([0.01, 1e-9, 0.3, 2.0, 1e-4, 0.5])
record("kl_inv_upper", pac.kl_inv_upper(q, c))
record("kl_inv_lower", pac.kl_inv_lower(q, c))
record("kl_bernoulli", pac.kl_bernoulli(q[1:-1], q[2:]))
args = (np.array([0.0, 0.03, 0.25]), 12345.678, 50000, 0.05)
for name in ("maurer", "mcallester", "catoni", "fquad", "flamb_optimal_lam"):
  record(name, getattr(pac, name)(*args))
record("flamb", pac.flamb(*args, 0.7))
record("mc_epsilon", pac.mc_epsilon(0.125, 1000, 0.01))
record("hoeffding_upper", pac.hoeffding_upper(3.5, 12.0, 0.01))
record("isotropic_kl", isotropic_kl(0.37, 7_000_000_000, 1e-4, 1.0000001e-4))
rng = np.random.default_rng(0)
mu_p = {"a": rng.normal(size=(64, 32)).astype(np.float32), "b": np.ones(7, np.float32)}
mu_q = {k: v + np.float32(1e-3) for k, v in mu_p.items()}
record("gaussian_kl", gaussian_kl(mu_q, mu_p, 1e-3, 1.001e-3))
record("gaussian_kl_diag", gaussian_kl(mu_q, mu_p, {"a": 2e-3, "b": np.full(7, 3e-3)}, 0.01))
ck = checkpoint_kl(sys.argv[2], sys.argv[3], 0.004, 0.02)
record("checkpoint_kl", ck.kl)
record("checkpoint_kl.sq_distance", ck.sq_distance)
record("checkpoint_kl.kl_at", ck.kl_at(0.003, 0.03))

# Traced: the KL alone, then a PBB-style objective differentiated under jit (as in
# pacbayes.posterior.fit), whose own arithmetic on the float64 results runs in a scope.
log_s = jnp.float32(np.log(0.01))
value, grad = jax.jit(jax.value_and_grad(
    lambda s: gaussian_kl(mu_q, mu_p, jnp.exp(s), 0.02)))(log_s)
record("traced_kl_value", value)
record("traced_kl_grad", grad)

@float64_scope()
def objective(log_s):
  kl = gaussian_kl(mu_q, mu_p, jnp.exp(log_s), 0.02)
  return pac.maurer(jnp.float32(0.05), kl + np.log(10.0), 4000, 0.05)

value, grad = jax.jit(jax.value_and_grad(objective))(log_s)
record("traced_value", value)
record("traced_grad", grad)
# The shift classifier: float32 by design, the same numbers whatever the flag.
from pacbayes.shift.classifier import ClassifierOptions, tv_classifier
x_train = rng.normal(size=(120, 3)).astype(np.float32)
x_test = (rng.normal(size=(100, 3)) + [0.8, 0.0, 0.3]).astype(np.float32)
for model in ("logistic", "mlp"):
  opts = ClassifierOptions(model=model, steps=30, batch_size=64)
  res = tv_classifier(x_train, x_test, 0.05, 3, options=opts)
  for field in ("estimate", "lower", "plugin_tv"):
    record(f"tv_classifier_{model}.{field}", getattr(res, field))
  record(f"tv_classifier_{model}.w", res.params["w1" if model == "mlp" else "w"])
print(json.dumps({"x64_after_import": x64_after_import, "results": out}))
"""


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.pop("JAX_ENABLE_X64", None)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code, *args],
                        capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(plain run, x64 run): the script's JSON in a process without and with x64."""
  root = tmp_path_factory.mktemp("precision")
  rng = np.random.default_rng(7)
  prior = {k: rng.normal(size=s).astype(np.float32) for k, s in hf_shapes(CONFIG).items()}
  post = {k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in prior.items()}
  for name, weights in (("pre", prior), ("ft", post)):
    (root / name).mkdir()
    (root / name / "config.json").write_text(json.dumps(CONFIG.to_hf_config()))
    save_file(weights, str(root / name / "model.safetensors"))
  out = []
  for mode in ("plain", "x64"):
    proc = _run(SCRIPT, mode, str(root / "pre"), str(root / "ft"))
    assert proc.returncode == 0, f"{mode} run failed:\n{proc.stderr[-4000:]}"
    out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  return tuple(out)


@pytest.mark.slow
def test_importing_pacbayes_leaves_x64_off():
  proc = _run("import pacbayes, jax; print(jax.config.jax_enable_x64)")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "False"


@pytest.mark.slow
def test_importing_every_module_leaves_x64_off():
  code = ("import importlib, pkgutil, jax, pacbayes\n"
          "names = [m.name for m in pkgutil.walk_packages(pacbayes.__path__, 'pacbayes.')\n"
          "         if not m.name.endswith('__main__')]\n"
          "for name in names:\n"
          "  importlib.import_module(name)\n"
          "  assert not jax.config.jax_enable_x64, name\n"
          "print(len(names))")
  proc = _run(code)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert int(proc.stdout.strip()) > 50


@pytest.mark.slow
def test_results_are_float64_without_x64(runs):
  plain, x64 = runs
  assert plain["x64_after_import"] is False
  for name, rec in plain["results"].items():
    if name.endswith("_grad") or name.endswith(".w"):  # float32 arguments, float32 weights
      assert rec["dtype"] == "float32", (name, rec)
      continue
    assert rec["dtype"] == "float64", (name, rec)
    if name.startswith(("checkpoint_kl", "tv_classifier")):
      assert rec["type"] == "float", (name, rec)  # Python floats
    elif not name.startswith("traced"):
      assert rec["type"] == "ndarray", (name, rec)  # NumPy outside the scope
  assert x64["results"]["maurer"]["type"] == "ArrayImpl"  # x64 on: JAX arrays, as before


# The shift classifier is float32 by design, but optax's Adam and L-BFGS form some scalars
# (bias corrections, line-search steps) in the default float dtype, float64 under x64, so its
# weights move by a float32 rounding or so; the counts behind `estimate` and `lower` do not.
# Measured: logistic weights 9e-8 and plugin_tv 5e-9 relative; MLP weights 3.5e-4, plugin_tv
# 5e-7 relative.
CLOSE = {
  "tv_classifier_logistic.plugin_tv": dict(rtol=1e-7, atol=0.0),
  "tv_classifier_logistic.w": dict(rtol=1e-6, atol=1e-7),
  "tv_classifier_mlp.plugin_tv": dict(rtol=1e-5, atol=0.0),
  "tv_classifier_mlp.w": dict(rtol=1e-2, atol=1e-4),
}


def _values(rec):
  return np.array([float.fromhex(h) for h in rec["hex"]])


@pytest.mark.slow
def test_results_are_bit_identical_to_an_x64_run(runs):
  plain, x64 = runs
  assert plain["results"].keys() == x64["results"].keys()
  for name, rec in plain["results"].items():
    if name in CLOSE:
      np.testing.assert_allclose(_values(rec), _values(x64["results"][name]), **CLOSE[name],
                                 err_msg=name)
    else:
      assert rec["hex"] == x64["results"][name]["hex"], name
