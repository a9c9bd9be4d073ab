"""Old name of `tests.helpers.mp_reference`, kept while test_certificate/test_extrapolation
import it."""

from tests.helpers.mp_reference import MP_DPS, mp_inv_lower, mp_inv_upper, mp_kl  # noqa: F401
