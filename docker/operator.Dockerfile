# syntax=docker/dockerfile:1.7
# kiln-operator: a static (musl) binary on an empty image, running as a non-root user.
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t kiln-operator .
# Base images are pinned by version tag; pin them by digest too where your registry mirror knows the digests
# (they could not be looked up from the machines this was written on).

FROM docker.io/library/rust:1.95.0-alpine3.22 AS build
RUN apk add --no-cache musl-dev=~1.2
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kiln-operator \
    && install -D -m 0755 target/release/kiln-operator /out/kiln-operator

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/kiln-operator /kiln-operator
# 65532: the conventional "nonroot" uid/gid; the chart's securityContext runs it read-only with no capabilities.
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/kiln-operator"]
CMD ["run"]
