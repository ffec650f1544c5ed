"""Core: the records that flow between stages, all exception classes, the SoC registry, and
the store (where files live, atomic writes, the environment). Imports nothing else of leti."""
