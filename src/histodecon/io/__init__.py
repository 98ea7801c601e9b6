"""Reading slides into SpatialData."""
