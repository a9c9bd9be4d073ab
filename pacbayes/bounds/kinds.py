"""The words that name each kind of number in a report (one definition, used by every path)."""

KIND_CERTIFIED = "certified under difficulty shift (TV)"
KIND_ESTIMATE = "estimate"
KIND_LOWER = "lower bound"
KIND_DIAGNOSTIC = "diagnostic"

__all__ = ["KIND_CERTIFIED", "KIND_DIAGNOSTIC", "KIND_ESTIMATE", "KIND_LOWER"]
