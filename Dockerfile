# syntax=docker/dockerfile:1
#
# KafkaSend in a container: the static (musl) binary on distroless/static,
# which brings CA certificates, /tmp and a non-root user and nothing else.
#
#   docker build -t kafkasend .                  # the image (last stage)
#   docker build --target demo -t kafkasend-demo .  # plus examples/demo_api
#
# The image's HEALTHCHECK runs the binary itself (`kafkasend health`)
# against the portal's admin listener on 127.0.0.1:9464; see README
# "Docker and Compose".

ARG RUST_VERSION=1.95

# ---- build: a fully static kafkasend ------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock README.md ./
COPY src src
COPY examples examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin kafkasend \
    && mkdir -p /out/bin \
    && cp target/x86_64-unknown-linux-musl/release/kafkasend /out/bin/ \
    && ln -s kafkasend /out/bin/kafkasend-client \
    && ln -s kafkasend /out/bin/kafkasend-portal

# ---- build-demo: the demo target API (only for the demo stage) -----------
FROM build AS build-demo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --example demo_api \
    && cp target/x86_64-unknown-linux-musl/release/examples/demo_api /out/

# ---- base: what every image shares --------------------------------------
FROM gcr.io/distroless/static-debian12:nonroot AS base
# The Python tool's program names are links to the binary, which acts as
# the program it is started as; copying the folder keeps them links.
COPY --from=build /out/bin/ /usr/local/bin/
# distroless' "nonroot" user; numeric so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
WORKDIR /home/nonroot

# ---- demo: kafkasend plus the demo API, for compose.yaml -----------------
FROM base AS demo
COPY --from=build-demo /out/demo_api /usr/local/bin/demo_api
HEALTHCHECK NONE
ENTRYPOINT ["demo_api", "0.0.0.0:8080"]

# ---- runtime (default): kafkasend alone -----------------------------------
FROM base AS runtime
# The portal's admin listener (/healthz, /readyz, /metrics) is what the
# HEALTHCHECK probes; containers of this image turn it on by default.
ENV PORTAL_ADMIN_LISTEN=0.0.0.0:9464
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["kafkasend", "health", "--url", "http://127.0.0.1:9464/healthz", "--timeout", "4"]
ENTRYPOINT ["kafkasend"]
CMD ["--help"]
