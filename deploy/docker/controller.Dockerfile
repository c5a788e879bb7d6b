# The controller image: a static (musl) binary on distroless, as a non-root user.
#   docker build -f deploy/docker/controller.Dockerfile -t portico/controller .
FROM rust:1.95-alpine AS build
# ring compiles C and assembly: a C compiler besides the musl headers.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p portico-controller --bin portico-controller \
 && strip target/release/portico-controller

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/portico-controller /usr/local/bin/portico-controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/portico-controller"]
