"""Older public face of the posterior engine: every public name of `pacbayes.posterior`.

`from pacbayes.posterior.perturb import mc_risk` (or `perturb.search_sigma`, ...) keeps
working. The names are those of the package's ``__all__``, imported here in one statement, so
the list is kept in one place. The engine itself lives in `draws` (masks, sigmas, Gaussian
noise, `sample_posterior`, data batches), `montecarlo` (`mc_risk`, `MCRisk`,
`empirical_risk`), `sigma` (`choose_sigma`) and `fit` (`search_sigma`, `optimise_posterior`).
"""

from __future__ import annotations

import pacbayes.posterior as posterior
from pacbayes.posterior import *  # noqa: F403

__all__ = list(posterior.__all__)
