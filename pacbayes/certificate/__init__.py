"""The certificate: one route from (loss, prior, posterior, data, plan) to a `Certificate`."""

from pacbayes.certificate.core import (
    G_EXT_KINDS as G_EXT_KINDS,
)
from pacbayes.certificate.core import (
    METHODS as METHODS,
)
from pacbayes.certificate.core import (
    Record as Record,
)
from pacbayes.certificate.core import (
    ShiftInputs as ShiftInputs,
)
from pacbayes.certificate.core import (
    certify as certify,
)
from pacbayes.certificate.report import (
    SCHEMA as SCHEMA,
)
from pacbayes.certificate.report import (
    SCHEMA_V1 as SCHEMA_V1,
)
from pacbayes.certificate.report import (
    SCHEMA_V2 as SCHEMA_V2,
)
from pacbayes.certificate.report import (
    Certificate as Certificate,
)
from pacbayes.certificate.route import (
    CertifyPlan as CertifyPlan,
)
from pacbayes.certificate.route import (
    certify_posterior as certify_posterior,
)
from pacbayes.certificate.schema import (
    FIELD_TYPES as FIELD_TYPES,
)
from pacbayes.certificate.schema import (
    V1_KEYS as V1_KEYS,
)
from pacbayes.certificate.schema import (
    check_report as check_report,
)
from pacbayes.certificate.schema import (
    convert_v1 as convert_v1,
)
from pacbayes.certificate.schema import (
    render_table as render_table,
)
from pacbayes.certificate.shift import (
    certify_with_shift as certify_with_shift,
)

__all__ = [
    "Certificate",
    "CertifyPlan",
    "FIELD_TYPES",
    "G_EXT_KINDS",
    "METHODS",
    "Record",
    "SCHEMA",
    "SCHEMA_V1",
    "SCHEMA_V2",
    "ShiftInputs",
    "V1_KEYS",
    "certify",
    "certify_posterior",
    "certify_with_shift",
    "check_report",
    "convert_v1",
    "render_table",
]
