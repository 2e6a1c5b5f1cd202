# Production image: the gateway only (no test extras, no compilers in the final stage).
# Build: docker build -t hoopwire .
# Run:   docker run -v /etc/hoopwire:/etc/hoopwire:ro -v hoopwire-data:/var/lib/hoopwire \
#          -e ORDERS_DB_PASSWORD=... -p 6432:6432 -p 9187:9187 hoopwire
# (deploy/hoopwire.toml is an example /etc/hoopwire/hoopwire.toml.)
#
# The base is pinned by its exact tag (Python patch version and Debian release), not by digest:
# a digest can only be read from a registry, and none is reachable where this file was written.
# 3.11.7 is the Python the test suite runs on. Pin a digest (`python:3.11.7-slim-bookworm@sha256:…`)
# where a registry is at hand. Both stages are this image, so the Hyperscan the extension is
# compiled against (libhyperscan-dev) and the one it loads (libhyperscan5) come from the same
# Debian release, at the same pinned version.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG HYPERSCAN_VERSION=5.4.0-2

FROM ${PYTHON_IMAGE} AS build
ARG HYPERSCAN_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
        libhyperscan-dev=${HYPERSCAN_VERSION} \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ./ext
COPY hoopwire ./hoopwire
COPY requirements/pins.txt ./requirements/pins.txt
# the same pins as the tests (setuptools, wheel and Cython of the build too)
RUN PIP_CONSTRAINT=/src/requirements/pins.txt pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG HYPERSCAN_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends libhyperscan5=${HYPERSCAN_VERSION} \
    && rm -rf /var/lib/apt/lists/*
# numeric uid/gid (USER below too): Kubernetes' runAsNonRoot can only verify a number
RUN groupadd --system --gid 10001 hoopwire \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin hoopwire
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The SQLite state store and the audit log: the only paths the gateway writes. Created and
# owned before VOLUME, so a fresh named volume starts owned by hoopwire (not root), and the
# root filesystem can be mounted read-only.
RUN mkdir -p /var/lib/hoopwire/audit /etc/hoopwire \
    && chown -R hoopwire:hoopwire /var/lib/hoopwire && chmod 0750 /var/lib/hoopwire
VOLUME ["/var/lib/hoopwire"]
WORKDIR /var/lib/hoopwire
# the default state file and audit log (a config without [state]/[audit] paths) go here, not
# next to the read-only config
ENV HOOPWIRE_DATA_DIR=/var/lib/hoopwire
USER 10001:10001
EXPOSE 6432 9187
# /readyz, not /healthz: 503 while the audit log cannot be written (fail-closed) or while
# starting/stopping. slim has no curl; urlopen raises on a non-2xx answer, so the exit status
# is the probe's result. Each try is bounded (3 s socket timeout inside a 5 s check timeout).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9187/readyz', timeout=3)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["hoopwire"]
CMD ["serve", "--config", "/etc/hoopwire/hoopwire.toml"]
