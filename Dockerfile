# walhook: multi-stage build, small non-root runtime image.
# Build: docker build -t walhook .
# Run:   docker run -v $PWD/walhook.toml:/etc/walhook/walhook.toml -p 9187:9187 walhook

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
# Build settings: the allocator's threshold for giving large blocks back to the OS.
COPY .cargo ./.cargo
COPY src ./src
COPY sql ./sql
RUN cargo build --release --locked --bin walhook \
 && strip target/release/walhook

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin walhook \
 && mkdir -p /etc/walhook
COPY --from=build /src/target/release/walhook /usr/local/bin/walhook
# The reference config; mount your own over it.
COPY config/walhook.toml /etc/walhook/walhook.toml
USER walhook:walhook
# Listen on all interfaces inside the container (an override: WALHOOK_<SECTION>__<KEY>);
# JSON logs for log pipelines (WALHOOK_LOG_FORMAT is the --log-format flag, not a config key).
ENV WALHOOK_ADMIN__LISTEN=0.0.0.0:9187 \
    WALHOOK_LOG_FORMAT=json
EXPOSE 9187
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9187/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/walhook"]
CMD ["run", "--config", "/etc/walhook/walhook.toml"]
