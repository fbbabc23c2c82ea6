# syntax=docker/dockerfile:1
# Multi-stage build of the same release binary the README builds with `cargo build --release`.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in verify_normalize load routing delivery; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked --bin switchboard || true
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin switchboard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home switchboard
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
# The production template: no demo credential; secrets come from the environment or files
# (deploy/config.production.toml says which).
COPY deploy/config.production.toml /etc/switchboard/config.toml
USER 10001
ENV SWITCHBOARD_CONFIG=/etc/switchboard/config.toml \
    SWITCHBOARD__SERVER__BIND=0.0.0.0:8080 \
    SWITCHBOARD__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM (docker stop) drains in-flight requests before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve"]
