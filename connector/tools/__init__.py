"""Operator commands besides run: check, dlq replay, the dry run."""
