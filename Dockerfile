# y-redis: one image for every subcommand (server, worker, all, migrate,
# keygen, auth-example). Build:  docker build -t y-redis .
# Run:    docker run --rm y-redis --help     (see docker-compose.yml and .env.template)

# ---- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# libpq (pq-sys, bundled) links OpenSSL; both are usually in the image already
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Dependency layer: compile every crate from Cargo.lock against stub sources,
# so editing src/ does not rebuild the dependencies.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin y-redis \
 && rm -rf src target/release/.fingerprint/y-redis-* target/release/deps/y_redis-* target/release/deps/liby_redis-*

COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin y-redis \
 && install -m 0755 target/release/y-redis /usr/local/bin/y-redis

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for rediss:// and https:// (S3, auth callbacks); it also
# brings libssl3, which the binary links (named so the dependency is explicit).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 yredis \
 && useradd --system --uid 10001 --gid yredis --home-dir /var/lib/y-redis --create-home --shell /usr/sbin/nologin yredis
COPY --from=builder /usr/local/bin/y-redis /usr/local/bin/y-redis
# The working directory holds filesystem storage (STORAGE_DIR default
# ./y-redis-data) when neither S3 nor Postgres is configured.
WORKDIR /var/lib/y-redis
USER 10001:10001
ENV HOST=0.0.0.0
# server: 3002 (PORT); worker health/metrics: 3003 (WORKER_PORT); auth-example: 5173
EXPOSE 3002
ENTRYPOINT ["y-redis"]
CMD ["server"]
