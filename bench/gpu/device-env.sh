# Sourced at the start of every command on the GPU machine (see bench/gpu/README.md): the binaries were
# built on the CPU machine, whose absolute paths are compiled into the tests, so the repo copy is linked
# there; CUDA's libraries (NVRTC, cuBLAS) are found where the machine's toolkit or PyTorch keeps them.
mkdir -p /work && ln -sfn "$PWD" /work/wt-gpu
[ -e /work/main ] || ln -sfn "$PWD" /work/main
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, q, "lib") for p in nvidia.__path__ for q in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH KILN_KERNEL_CACHE=/tmp/kiln-kernels
