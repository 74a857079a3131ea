"""Episode dataset store and ingest (numpy, h5py)."""
