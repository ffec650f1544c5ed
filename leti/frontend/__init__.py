"""Front end: model bytes -> Graph (shape-inferred layers) -> kernel plan (the runtime's fusion
rules, as data) -> feature rows. May import `leti.core` only; no xgboost, no flask."""
