# Production image: the gateway only (no test extras, no compilers in the final stage).
# Build: docker build -t hoopwire .   Run: docker run -v /etc/hoopwire:/etc/hoopwire:ro \
#   -e ORDERS_DB_PASSWORD=... -p 6432:6432 -p 9187:9187 hoopwire
FROM python:3.11-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev libhyperscan-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ./ext
COPY hoopwire ./hoopwire
COPY requirements/pins.txt ./requirements/pins.txt
# the same pins as the tests (setuptools, wheel and Cython of the build too)
RUN PIP_CONSTRAINT=/src/requirements/pins.txt pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libhyperscan5 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin hoopwire
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER hoopwire
EXPOSE 6432 9187
STOPSIGNAL SIGTERM
ENTRYPOINT ["hoopwire"]
CMD ["serve", "--config", "/etc/hoopwire/hoopwire.toml"]
