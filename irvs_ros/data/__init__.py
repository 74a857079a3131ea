"""Episode dataset store and ingest (numpy, h5py)."""

from irvs_ros.data.store import Dataset, DatasetError, DatasetWriter

__all__ = ["Dataset", "DatasetError", "DatasetWriter"]
