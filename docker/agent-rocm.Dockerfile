# syntax=docker/dockerfile:1.7
# kiln-agent for AMD GPUs (ROCm). Built and run on the same pinned ROCm release: the HIP runtime's soname
# changes between major releases, and field experience says to pin ROCm.
# Build from the repository root:  docker build -f docker/agent-rocm.Dockerfile -t kiln-agent:rocm .
# Base images are pinned by version tag; pin them by digest too where your registry mirror knows the digests
# (they could not be looked up from the machines this was written on).
#
# GPU targets: none are compiled into the image. At start the agent compiles its kernels with hipRTC for
# the exact device (gfx1100 for an RX 7900 XTX/XT, gfx1030, gfx90a, gfx942, ...) and caches the code
# object under $KILN_KERNEL_CACHE, so a new GPU needs no new image; hipRTC, comgr and the device libraries
# come with hip-runtime-amd and rocm-device-libs below.

ARG ROCM_VERSION=6.4.1

FROM docker.io/rocm/dev-ubuntu-24.04:${ROCM_VERSION} AS build
ARG RUST_VERSION=1.95.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl=8.5.* ca-certificates=2024* build-essential=12.10* \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo PATH=/opt/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
ENV HIP_PLATFORM=amd HIP_PATH=/opt/rocm
# The `rocm` cargo feature links the HIP runtime (hip-sys); without it the binary is CPU-only.
RUN --mount=type=cache,target=/opt/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kiln-agent --features rocm \
    && install -D -m 0755 target/release/kiln-agent /out/kiln-agent

# Runtime: Ubuntu with only the HIP runtime from AMD's repository for the same ROCm release, no compilers.
FROM docker.io/library/ubuntu:24.04
ARG ROCM_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=2024* curl=8.5.* gnupg=2.4.* \
    && curl -fsSL https://repo.radeon.com/rocm/rocm.gpg.key | gpg --dearmor -o /etc/apt/keyrings/rocm.gpg \
    && echo "deb [arch=amd64 signed-by=/etc/apt/keyrings/rocm.gpg] https://repo.radeon.com/rocm/apt/${ROCM_VERSION} noble main" \
        > /etc/apt/sources.list.d/rocm.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "hip-runtime-amd=6.4.*" "rocm-device-libs=1.0.*" \
    && apt-get purge -y curl gnupg && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kiln-agent /usr/local/bin/kiln-agent
ENV KILN_HOST=0.0.0.0 KILN_PORT=8080 LD_LIBRARY_PATH=/opt/rocm/lib KILN_KERNEL_CACHE=/tmp/kiln-kernels
# Non-root: /dev/kfd and /dev/dri/renderD* are reachable through the pod's supplementalGroups (video/render
# gids of the node), which the operator sets; no privileges are needed.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kiln-agent"]
CMD ["serve"]
