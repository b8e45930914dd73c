# One image for the API and the workers. Build a GPU worker image with --build-arg GPU=1.
ARG BASE_IMAGE=python:3.12-slim-bookworm

# The run-time requirements alone, out of pyproject.toml: the layer that installs them is
# rebuilt when they change, not when a version, a dev tool or a description does.
FROM ${BASE_IMAGE} AS requirements
ARG GPU=0
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import sys, tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
backend = ["tensorflow[and-cuda]>=2.16"] if sys.argv[1] == "1" \
    else project["optional-dependencies"]["tensorflow"]; \
print("\n".join(project["dependencies"] + backend))' "$GPU" >requirements.txt

FROM ${BASE_IMAGE}
# Where builds go through a TLS-inspecting proxy: the CA bundle pip should trust.
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv $VIRTUAL_ENV
WORKDIR /app

# Dependencies first, so a change to the source or the docs rebuilds only the last layers.
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

# What does not change with the code comes first. On vfs every step copies the whole image,
# so a code change rebuilds one layer: the COPY. The source runs from /app (`python -m service`
# finds it there), so it needs no install step of its own.
RUN useradd --create-home --uid 10001 convlab && mkdir -p /app/data && chown convlab /app/data
ENV HOST=0.0.0.0 PORT=8000 PYTHONPATH=/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["python", "-m", "service", "api"]
USER convlab

# The source last (.dockerignore keeps tests and benchmarks out), owned by root: read-only to
# the service.
COPY . ./
