"""The procedural generator behind :func:`histodecon.datasets.synthetic`.

One module per stage: :mod:`._layout` places spots, tissue and cell-type domains;
:mod:`._painting` paints the H&E image from them; :mod:`._expression` holds the fixed
signatures and draws counts; :mod:`._slide` assembles a slide and :mod:`._reference` a
single-cell reference.
"""

from ._reference import synthetic_reference
from ._slide import synthetic
