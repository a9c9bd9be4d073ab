"""Old name of `tests.helpers.models`, kept while test_multihost imports it."""

from tests.helpers.models import jit_forward, tiny_config  # noqa: F401
