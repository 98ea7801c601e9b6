"""Pathology foundation-model encoders: a registry of declarative entries."""
