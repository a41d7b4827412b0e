# Production image: the ctrguard package and its runtime dependencies, no dev tools.
FROM python:3.11-slim

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
COPY . .
# The detector core is compiled with mypyc (detectors/native.py); the compiler and its
# headers are removed again in the same layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install "mypy==2.4.1" "setuptools>=77" wheel \
    && CTRGUARD_BUILD_NATIVE=1 pip install --no-compile --no-build-isolation . \
    && (cd / && python -c "import detectors.native as n, detectors.monitor; assert n.in_use() == 'compiled', n.status()") \
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
