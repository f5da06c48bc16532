# switchyard container image.
#
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 switchyard demo      # demo backends + proxy in one container
#   docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/switchyard/proxy.yaml:ro" switchyard
#
# Listeners in a mounted config must bind 0.0.0.0 (not 127.0.0.1) to be reachable from outside.

# --- build ---
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Cargo.toml names the bench targets, so benches/ must be present for the manifest to load.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked

# --- runtime ---
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY proxy.yaml /etc/switchyard/proxy.yaml
# The demo config binds the listener to 127.0.0.1:8080, which `docker run -p` cannot reach;
# in the image it binds 0.0.0.0:8080. Upstreams stay on 127.0.0.1, where `demo` starts its
# backends inside the container. `check` fails the build if the edit ever breaks the file.
RUN sed -i 's/bind: "127.0.0.1:8080"/bind: "0.0.0.0:8080"/' /etc/switchyard/proxy.yaml \
    && switchyard check --config /etc/switchyard/proxy.yaml
ENV SWITCHYARD_CONFIG=/etc/switchyard/proxy.yaml
USER switchyard
# 8080 proxy, 9901 admin API (once built), 9001-9003 demo backends.
EXPOSE 8080 9901 9001 9002 9003
ENTRYPOINT ["switchyard"]
CMD ["run"]
