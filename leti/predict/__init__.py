"""Prediction: the registry (which model answers for a SoC and runtime: measured, transfer or
calibration-only, then the saved calibration) and the `Estimator` built from its choice.
Serving code: may import `leti.core`, `leti.frontend` and `leti.models`; never `train`,
`evaluate`, `measurements` or `service`."""
