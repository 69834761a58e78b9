# Multi-stage build: compile with the full toolchain, run on a small non-root image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor ./vendor
COPY bench ./bench
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked -p subsync --bin subsync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home subsync
COPY --from=build /src/target/release/subsync /usr/local/bin/subsync
# The production template only: no demo source, no development token (config/default.toml
# stays out of the image). Secrets come from the environment (see docker-compose.yml).
COPY config/production.toml /etc/subsync/subsync.toml
USER 10001
ENV SUBSYNC_CONFIG=/etc/subsync/subsync.toml
EXPOSE 8080 9090
ENTRYPOINT ["subsync"]
CMD ["serve"]
