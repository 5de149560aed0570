# syntax=docker/dockerfile:1.7
# kiln-agent for NVIDIA GPUs. The binary links no CUDA library: cudarc loads libcuda (from the node's driver,
# injected by the NVIDIA container toolkit) and libnvrtc (from this image) at run time.
# Build from the repository root:  docker build -f docker/agent-cuda.Dockerfile -t kiln-agent:cuda .
# Base images are pinned by version tag; pin them by digest too where your registry mirror knows the digests
# (they could not be looked up from the machines this was written on). CUDA 13.0 matches driver >= 580.

FROM docker.io/library/rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# The binary is built against bookworm's glibc 2.36 and runs on the newer glibc of the Ubuntu 24.04 runtime.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kiln-agent \
    && install -D -m 0755 target/release/kiln-agent /out/kiln-agent

# The runtime flavour carries libnvrtc (kernels are compiled for the card at start-up), not the compilers.
FROM docker.io/nvidia/cuda:13.0.1-runtime-ubuntu24.04
COPY --from=build /out/kiln-agent /usr/local/bin/kiln-agent
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    KILN_HOST=0.0.0.0 \
    KILN_PORT=8080
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kiln-agent"]
CMD ["serve"]
