"""Reading slides into SpatialData."""

from ._anndata import from_anndata
from ._hest import read_hest
from ._slide import read_slide
from ._spatialdata import from_spatialdata
from ._st import read_st
from ._visium import read_visium
from ._visium_hd import read_visium_hd
from ._xenium import read_xenium
