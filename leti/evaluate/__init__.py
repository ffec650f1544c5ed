"""Evaluation: the accuracy and transfer protocols (always split by model), their scores and
the generated reports. May import everything below it (`train`, `predict`, `measurements`,
`models`, `frontend`, `core`); never `service`."""
