#!/usr/bin/env bash
# The real models of scripts/fetch-models.sh on the GPU machine, for gpu_models' real-model tests. They are
# larger than one call carries (64 MiB), so they travel in parts, one call per part, to a machine kept warm
# between the calls (its /tmp survives), and are reassembled and checked against their sha256 there.
#   here:    bench/gpu/real-models.sh split [MODEL...]   parts under .device/real/1, .device/real/2, ...
#            (default: SmolLM2-135M-Instruct.Q4_1.gguf, three parts of 35 MiB: with the ~25 MB working
#            tree and the 4.6 MB of packed binaries, a call carries 64 MiB in all; KILN_PART_SIZE to change)
#   device:  bench/gpu/real-models.sh stage .device/real/N   in each call, carrying that folder
#            bench/gpu/real-models.sh test                   once every part is staged
set -euo pipefail
STAGE=/tmp/kiln-real-models
case "${1:-}" in
split)
    shift
    models=("${@:-SmolLM2-135M-Instruct.Q4_1.gguf}")
    src=${KILN_MODELS:-$HOME/.cache/kiln/models}
    rm -rf .device/real && mkdir -p .device/real/parts
    for m in "${models[@]}"; do
        (cd "$src" && sha256sum "$m") >> .device/real/parts/SHA256SUMS
        split -b "${KILN_PART_SIZE:-35M}" -d "$src/$m" ".device/real/parts/$m.part-"
    done
    n=0
    for part in .device/real/parts/*.part-*; do
        n=$((n + 1)); mkdir -p ".device/real/$n"; mv "$part" ".device/real/$n/"
    done
    mv .device/real/parts/SHA256SUMS .device/real/1/ && rmdir .device/real/parts
    echo "$n parts: carry .device/real/1 .. .device/real/$n, one per call"
    ;;
stage)
    mkdir -p "$STAGE" && cp "$2"/* "$STAGE"/ && ls "$STAGE"
    ;;
test)
    cd "$STAGE"
    for first in *.part-00; do
        m=${first%.part-00}
        cat "$m".part-* > "$m" && rm "$m".part-*
    done
    sha256sum -c SHA256SUMS
    cd - > /dev/null
    source bench/gpu/device-env.sh
    KILN_MODELS=$STAGE .device/bin/gpu_models --test-threads 1 --nocapture real_model
    ;;
*)
    sed -n 2,8p "$0"; exit 2
    ;;
esac
