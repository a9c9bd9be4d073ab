"""Old name of `tests.helpers.lab_results`, kept while test_theory/test_select_cli import it."""

from tests.helpers.lab_results import (  # noqa: F401
  BUCKETS,
  GOOD,
  MIXTURES,
  OPS,
  PER_SLICE,
  SIZES,
  make_results,
)
