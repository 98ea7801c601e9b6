"""Preprocessing: spot patches and background filtering."""
