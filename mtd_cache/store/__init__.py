"""The teacher store (HDF5): the only package that imports h5py.

Public API::

    from mtd_cache.store import TeacherStore, StoreWriter, StoreSpec, PrimarySpec, Fingerprint, write_store

``docs/FORMAT.md`` describes the file; ``format.py`` names its datasets and attributes, and holds the
rules shared by writing and reading (``partial_dir``, ``check_finite_logits``).
"""

from .compare import diff_stores
from .format import FORMAT, VERSION, Fingerprint, PrimarySpec, StoreSpec, check_finite_logits, partial_dir
from .reader import TeacherStore
from .sidecar import forward_sidecar, read_forward_sidecar, write_forward_sidecar
from .states import PrimaryStates, RaggedBatch
from .writer import StoreWriter, output_lock, write_store

__all__ = ["FORMAT", "VERSION", "Fingerprint", "PrimarySpec", "StoreSpec", "PrimaryStates", "RaggedBatch",
           "TeacherStore", "StoreWriter", "check_finite_logits", "diff_stores", "forward_sidecar", "output_lock",
           "partial_dir", "read_forward_sidecar", "write_forward_sidecar", "write_store"]
