# leti HTTP service: `docker build -t leti . && docker run -p 8000:8000 leti`
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package, the trained models inside it (setup.py maps models/ into the wheel) and its
# CPU-only dependencies (on Linux the dependency is xgboost-cpu: no CUDA). To serve other
# models, mount them and set LETI_MODELS_DIR.
COPY pyproject.toml setup.py README.md /tmp/src/
COPY leti /tmp/src/leti
COPY models /tmp/src/models
RUN pip install /tmp/src && rm -rf /tmp/src

WORKDIR /app

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin leti
USER leti

EXPOSE 8000
# slim has no curl: ask /healthz with Python's standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

CMD ["leti", "serve", "--host", "0.0.0.0", "--port", "8000"]
