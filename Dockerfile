# pricefeed with both ways of running several nodes (cluster mode, and nodes on your own broker
# elected with etcd), for docker-compose.yml (three nodes behind HAProxy, or profile `external`:
# three on Mosquitto with etcd) or on its own; with the gRPC API (--grpc-listen).
#
#   docker build -t pricefeed .
#   docker run -p 1883:1883 -p 8080:8080 pricefeed        # one node, embedded broker
#
# The build stage needs protoc for the cluster, etcd and grpc features (Debian's protobuf-compiler);
# the runtime image has the binaries, CA certificates (the price sources are HTTPS), curl for the
# health check, and nothing else.

FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features publisher/cluster,publisher/etcd,publisher/grpc,history-server/grpc \
        --bin pricefeed --bin history-api --bin pricesub \
    && cp target/release/pricefeed target/release/history-api target/release/pricesub /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/pricefeed --create-home pricefeed
COPY --from=build /usr/local/bin/pricefeed /usr/local/bin/history-api /usr/local/bin/pricesub /usr/local/bin/
USER pricefeed
WORKDIR /var/lib/pricefeed
ENV PRICEFEED_DB=/var/lib/pricefeed/pricefeed.db \
    PRICEFEED_LOG_FORMAT=json
# MQTT, history/health/metrics, the gRPC API (with --grpc-listen 0.0.0.0:50051), and in a
# cluster the node-to-node gRPC and raft ports.
EXPOSE 1883 8080 50051 5363 6003
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s \
    CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
ENTRYPOINT ["pricefeed"]
