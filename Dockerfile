# syntax=docker/dockerfile:1
# The apiproxy image:  docker build -t apiproxy:0.1.0 .
#   builder: wheels of the project and all its dependencies, installed into a venv at /opt/apiproxy
#   final:   the same Python base with that venv only: no sources, no pip, no compilers; user 65532
# Pin the base by digest for reproducible releases: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the build reads (pyproject names README.md as the readme); .dockerignore keeps the rest out.
COPY pyproject.toml README.md ./
COPY apiproxy ./apiproxy
# Every dependency ships binary wheels for linux/amd64 and linux/arm64 on CPython 3.11, so no compiler
# is needed here either; uvloop (the speedups extra) is optional at run time.
RUN python -m pip wheel --wheel-dir /wheels ".[speedups]" \
 && python -m venv /opt/apiproxy \
 && /opt/apiproxy/bin/pip install --no-index --find-links /wheels "apiproxy[speedups]" \
 && /opt/apiproxy/bin/python -m pip uninstall --yes pip setuptools \
 && /opt/apiproxy/bin/apiproxy --help >/dev/null

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="apiproxy" \
      org.opencontainers.image.description="Authenticating, read-only, streaming Kubernetes API proxy for Istio multicluster" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user for 65532 (the Deployment runs as it too), and no package installers left in the image.
RUN groupadd --system --gid 65532 apiproxy \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin apiproxy \
 && python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel
COPY --from=builder /opt/apiproxy /opt/apiproxy
ENV PATH="/opt/apiproxy/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /nonexistent
EXPOSE 4443 9090
ENTRYPOINT ["apiproxy"]
CMD ["serve", "--help"]
