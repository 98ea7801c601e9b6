"""Example data: procedurally generated slides and the public her2st dataset."""

from ._her2st import her2st
from ._synthetic import synthetic, synthetic_reference
