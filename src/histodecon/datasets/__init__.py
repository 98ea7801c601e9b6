"""Example data: procedurally generated slides and the public her2st dataset."""
