#!/usr/bin/env bash
# Assembles a CUDA 13.0 build toolkit (nvcc, headers, link libraries) from NVIDIA's PyPI
# wheels, so that `cargo build --features cuda` works on a machine without a CUDA install
# or a GPU (CI). Prints the environment to build with; use it as
#
#     eval "$(scripts/cuda_toolkit.sh [DIR])"     # DIR defaults to target/cuda-toolkit
#     cargo build -p ddpm-cli --features cuda
#
# Why CUDA 13.0: the cu12 wheels of `nvidia-cuda-nvcc-cu12` ship ptxas but not nvcc; from
# 13.0 the compiler driver is on PyPI (`nvidia-cuda-nvcc`, with `nvidia-nvvm` for cicc and
# `nvidia-cuda-crt` for its headers). cudarc 0.19 (candle 0.11's CUDA binding) knows 13.0.
#
# The one piece PyPI does not have is the driver library, libcuda.so, which candle links
# against (cudarc's `dynamic-linking`). The toolkit normally ships a stub of it for exactly
# this purpose (lib64/stubs/libcuda.so); here the stub is generated: one empty function
# per driver entry point that cudarc declares, with the real library's soname,
# libcuda.so.1, so that a binary built this way loads the machine's driver at run time.
# The stub is never on the run-time library path.
#
# The installation is reused when DIR already holds it (delete DIR to rebuild).
set -euo pipefail

dir="${1:-target/cuda-toolkit}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
top="$dir/nvidia/cu13"
compute_cap="${CUDA_COMPUTE_CAP:-90}"

# Pinned versions: the 13.0 release of every component.
packages=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.5.25"
)

if [[ ! -f "$dir/.complete" ]]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
    "${packages[@]}" >&2

  # Unversioned names for the linker (the wheels ship only the sonames).
  for lib in "$top"/lib/lib*.so.*; do
    base="${lib%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
  done

  # The driver stub: every cu* entry point cudarc's driver bindings declare.
  cudarc_src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d \
    -name 'cudarc-0.19.*' 2>/dev/null | sort | tail -n 1)"
  if [[ -z "$cudarc_src" ]]; then
    cargo fetch --locked >&2
    cudarc_src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d \
      -name 'cudarc-0.19.*' | sort | tail -n 1)"
  fi
  mkdir -p "$top/lib/stubs"
  grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$cudarc_src/src/driver/sys/mod.rs" \
    | sed -E 's/pub unsafe fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u \
    > "$top/lib/stubs/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$top/lib/stubs/libcuda.so" \
    "$top/lib/stubs/libcuda_stub.c"
  touch "$dir/.complete"
fi

cat <<EOF
export CUDA_HOME="$top"
export CUDA_PATH="$top"
export CUDA_COMPUTE_CAP="$compute_cap"
export CUDARC_CUDA_VERSION=13000
export PATH="$top/bin:\$PATH"
export LIBRARY_PATH="$top/lib:$top/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
EOF
