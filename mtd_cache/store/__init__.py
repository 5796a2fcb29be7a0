"""The teacher store (HDF5): the only package that imports h5py.

Public API::

    from mtd_cache.store import TeacherStore, StoreWriter, StoreSpec, PrimarySpec, Fingerprint, write_store

``docs/FORMAT.md`` describes the file; ``format.py`` names its datasets.
"""

from .format import FORMAT, VERSION, Fingerprint, PrimarySpec, StoreSpec
from .reader import PrimaryStates, RaggedBatch, TeacherStore
from .compare import diff_stores
from .writer import StoreWriter, partial_dir, write_store

__all__ = ["FORMAT", "VERSION", "Fingerprint", "PrimarySpec", "StoreSpec", "PrimaryStates", "RaggedBatch",
           "TeacherStore", "StoreWriter", "diff_stores", "partial_dir", "write_store"]
