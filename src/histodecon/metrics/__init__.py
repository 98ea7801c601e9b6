"""Evaluation metrics: CC and L1 scores, colocalisation similarity."""

from ._colocalization import colocalization_similarity
from ._scores import cc_score, l1_score
