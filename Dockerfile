# The cutover image: the `cutover` binary and HAProxy on Debian bookworm.
#
#   scripts/build-image                  # the usual way: builds cutover:dev (see below)
#   docker run --rm cutover:dev --version
#
# No image can be pulled here, so every stage starts FROM a base image made locally by
# scripts/base-images (debootstrap + docker import); packages come from the Debian mirror,
# which containers reach. Override it with --build-arg BASE=... if you have another one.
#
# Two ways to get the binary in, as two targets:
#
# - `runtime` (the default, last stage): compiled in the `build` stage with Debian's own Rust,
#   `rustc-web`/`cargo-web` 1.85 (bookworm's `rustc` is 1.63, too old for edition 2024; the
#   -web packages are Debian's newer toolchain, kept for the browsers). Crates come from
#   docker/vendor/ when it exists (`scripts/build-image --from-source` fills it with
#   `cargo vendor`, so the build needs no network), otherwise from crates.io.
# - `runtime-host-binary`: copies a binary built on the host (`cargo build --release`), given
#   by the build argument CUTOVER_BINARY (a path inside the build context). The host must run
#   bookworm's glibc (2.36) or older. This is what scripts/build-image does by default: it
#   takes seconds once the release build is warm.
#
# The daemon runs as the unprivileged user `cutover` (uid 10001). It needs the Docker socket:
# mount it and add the socket's group, whose id differs from host to host:
#
#   docker run -v /var/run/docker.sock:/var/run/docker.sock \
#       --group-add "$(stat -c %g /var/run/docker.sock)" cutover:dev run
#
# (docker-compose.yml does the same with DOCKER_GID.) Whoever can use that socket is root on
# the host in all but name; the non-root user only limits what a bug in cutover or HAProxy
# can do inside the container. Ports below 1024 need `--sysctl
# net.ipv4.ip_unprivileged_port_start=0` (or --user root); the defaults use 8080 and up.

ARG BASE=cutover-base:bookworm

FROM ${BASE} AS runtime-base
# policy-rc.d: keep the haproxy package from trying to start its service during the build.
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
    && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        haproxy ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/cutover --create-home \
        --shell /usr/sbin/nologin cutover \
    && install -d -o cutover -g cutover -m 0750 /run/cutover
ENV CUTOVER_NETWORK=cutover \
    NO_COLOR=1 \
    RUST_LOG=info
WORKDIR /var/lib/cutover
USER cutover
LABEL org.opencontainers.image.title="cutover" \
      org.opencontainers.image.description="Blue/green deployments for plain Docker, desired state in Consul KV" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM runtime-base AS runtime-host-binary
ARG CUTOVER_BINARY=target/release/cutover
COPY --chown=root:root ${CUTOVER_BINARY} /usr/local/bin/cutover
# cutover handles SIGTERM itself (it finishes the current steps and leaves every container
# running). Run with --init (compose: `init: true`) so that a PID 1 reaps HAProxy's workers.
ENTRYPOINT ["cutover"]
CMD ["run"]

FROM ${BASE} AS build
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        rustc-web cargo-web gcc libc6-dev ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && rustc --version && cargo --version
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src ./src
# docker/ holds at least its README; docker/vendor/ only after `cargo vendor`.
COPY docker ./docker
RUN if [ -d docker/vendor ]; then \
        mkdir -p .cargo \
        && printf '[source.crates-io]\nreplace-with = "vendored"\n\n[source.vendored]\ndirectory = "docker/vendor"\n' >.cargo/config.toml \
        && export CARGO_NET_OFFLINE=true; \
    fi \
    && cargo build --release --locked \
    && strip target/release/cutover \
    && target/release/cutover --version

FROM runtime-base AS runtime
COPY --from=build /src/target/release/cutover /usr/local/bin/cutover
ENTRYPOINT ["cutover"]
CMD ["run"]
