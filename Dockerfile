# syntax=docker/dockerfile:1
# One image for the four services (parley-auth, parley-gateway, parley-store, parley-router);
# docker-compose.yml and the Kubernetes manifests pick the binary with the command.
#
# Build stage: Debian bookworm with the -dev packages the CMake build finds through
# pkg-config. Runtime stage: bookworm-slim with only the shared libraries the binaries link
# (deploy/docker/check-packages.sh compares this list with the binaries' NEEDED entries).

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libmicrohttpd-dev libhiredis-dev librdkafka-dev libjansson-dev libmongoc-dev libbson-dev \
      libjwt-dev libcunit1-dev libsodium-dev libssl-dev libwslay-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY include include
COPY libs libs
COPY services services
COPY clients clients
COPY tests/unit tests/unit
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPARLEY_WERROR=ON \
 && cmake --build build \
 && ctest --test-dir build --output-on-failure

FROM debian:bookworm-slim AS runtime
# RUNTIME_PACKAGES: keep in step with the binaries' NEEDED libraries (checked by
# deploy/docker/check-packages.sh in make test); curl serves the HEALTHCHECK and openssl
# the one-shot key job of docker-compose.yml.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates curl openssl \
      libbson-1.0-0 libhiredis0.14 libjansson4 libjwt0 libmicrohttpd12 libmongoc-1.0-0 \
      librdkafka1 libsodium23 libssl3 libwslay1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin parley
COPY --from=build /src/build/bin/parley-auth /src/build/bin/parley-gateway \
     /src/build/bin/parley-store /src/build/bin/parley-router /src/build/bin/parley \
     /usr/local/bin/
USER 10001
# Which port answers /healthz depends on the service; PARLEY_HEALTH_PORT is set per service
# by compose and the manifests (Kubernetes uses its own probes).
ENV PARLEY_HEALTH_PORT=8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${PARLEY_HEALTH_PORT}/healthz || exit 1"]
CMD ["parley-gateway"]
