# syntax=docker/dockerfile:1
# portcullis: build in a Rust image, run from a small non-root image.
#
#   docker build -t portcullis .
#   docker run --rm portcullis demo --once

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin portcullis \
 && strip target/release/portcullis

# distroless/cc: glibc and libgcc only, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY config/ /etc/portcullis/
USER 65532:65532
# 15006 inbound mTLS (the example config); the admin server stays on loopback.
EXPOSE 15006
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/portcullis.yaml"]
