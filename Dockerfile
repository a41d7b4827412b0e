# Production image: the ctrguard package and its runtime dependencies, no dev tools.
# The base image by digest (python:3.11-slim, Python 3.11.16 on Debian trixie, as the
# official image's record in docker-library/repo-info lists it): a rebuild gets the same
# image. Move it on purpose: the new digest, then a build and the tests.
FROM python:3.11-slim@sha256:00f89b7f96f13d42900483da3253f8fb2e763eed7a0aa5f0358fec9d15d9f10c

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CTRGUARD_CONFIG=/etc/ctrguard/config.yaml \
    RECOVERY_DIR=/var/lib/ctrguard/recovery \
    RECOVERY_PARTITIONS=4

# tini as PID 1: forwards SIGTERM and reaps children (PID 1 ignores default signals).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ctrguard \
    && useradd --system --uid 10001 --gid ctrguard --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ctrguard

WORKDIR /src
# Runtime dependencies exactly as locked (versions and hashes: requirements.lock, `make
# lock`), in a layer of their own that a change to the code does not rebuild.
COPY requirements.lock .
RUN pip install --no-compile --no-deps --require-hashes -r requirements.lock
COPY . .
# The detector core is compiled with mypyc (ctrguard/native.py); the compiler and its
# headers are removed again in the same layer. ctrguard itself brings no dependency the lock
# did not (--no-deps; pip check fails the build if the lock misses one).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install "mypy==2.4.1" "setuptools==84.2.1" "wheel==0.48.0" \
    && CTRGUARD_BUILD_NATIVE=1 pip install --no-compile --no-build-isolation --no-deps . \
    && pip check \
    && (cd / && python -c "import ctrguard.native as n, ctrguard.detectors.monitor; assert n.in_use() == 'compiled', n.status()") \
    && pip uninstall -y mypy \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && install -D -m 0644 config/default.yaml /etc/ctrguard/config.yaml \
    && install -m 0755 docker/entrypoint.sh /usr/local/bin/ctrguard-entrypoint \
    && install -d -o ctrguard -g ctrguard -m 0750 /var/lib/ctrguard "$RECOVERY_DIR" \
    && rm -rf /src

WORKDIR /var/lib/ctrguard
USER ctrguard:ctrguard
VOLUME ["/var/lib/ctrguard"]
# /metrics, /healthz, /readyz (metrics.port); 2101 is the usual Bytewax cluster port
# (--addresses).
EXPOSE 9464 2101

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/ctrguard-entrypoint"]
CMD []
