# syntax=docker/dockerfile:1
# portcullis: build in a Rust image, run from a small non-root image.
#
#   docker build -t portcullis .
#   docker run --rm portcullis demo --once

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Build settings (AWS-LC without its CPU-jitter entropy collector).
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
COPY scripts ./scripts
# Statically linked (see scripts/build-release): no libc needed at run time.
RUN cp "$(scripts/build-release --locked)" /portcullis && strip /portcullis

# distroless/static: no libc, no shell, runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /portcullis /usr/local/bin/portcullis
COPY config/ /etc/portcullis/
USER 65532:65532
# 15006 inbound mTLS (the example config); the admin server stays on loopback.
EXPOSE 15006
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/portcullis.yaml"]
