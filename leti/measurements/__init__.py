"""Measurements: the row schema and its validation, importers of public data sets, the ncnn
benchmark table, and device collectors. May import `leti.core` and `leti.frontend`."""
