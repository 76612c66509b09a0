"""Parameter maps: a signal model fitted at every voxel (T2, T1, IVIM, any formula), each voxel with its status.

See :func:`fit_map` (in memory) and :func:`fit_map_chunked` (slab by slab on a Dask client, for series larger than
memory).
"""

from lossfit.maps.chunked import fit_map_chunked
from lossfit.maps.fit import estimate_sigma, fit_map
from lossfit.maps.models import BUILT_IN, MapModel
from lossfit.maps.result import NOT_FITTED, MapResult

__all__ = ["BUILT_IN", "NOT_FITTED", "MapModel", "MapResult", "estimate_sigma", "fit_map", "fit_map_chunked"]
