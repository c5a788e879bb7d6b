# The dataplane image (`portico`): a static (musl) binary on distroless, as a non-root user.
# The provisioner runs it as `portico connect ...` with a read-only root filesystem; its
# state directory is an emptyDir.
#   docker build -f deploy/docker/dataplane.Dockerfile -t portico/dataplane .
FROM rust:1.95-alpine AS build
# ring compiles C and assembly: a C compiler besides the musl headers.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portico-dataplane --bin portico \
 && strip target/release/portico

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/portico /usr/local/bin/portico
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/portico"]
