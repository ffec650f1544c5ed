"""Models: the fitted things (kernel boosters, graph-level correctors, transfer models, class
scales, calibration maps) and their pickle-free JSON persistence. Pure numerics; may import
`leti.core` and `leti.frontend`."""
