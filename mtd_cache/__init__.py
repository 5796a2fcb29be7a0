"""mtd-cache: multiple-teacher distillation from a store of cached teacher outputs."""

__version__ = "0.1.0"
