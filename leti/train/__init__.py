"""Training: per-SoC fits, the cross-SoC transfer fit, and calibration from end-to-end
timings. May import `core`, `frontend`, `models`, `measurements` and `predict`; never
`evaluate` or `service`."""
