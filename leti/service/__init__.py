"""The HTTP service: Flask app factory, request parsing, metrics, OpenAPI, the server. Serving
code: may import `leti.core`, `leti.frontend` and `leti.predict`; never `train`, `evaluate` or
`measurements`."""
