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
# Only the compiler and the runtime's headers and library come from PyPI (about 80 MB).
# The libraries candle links against are replaced by link stubs, as the CUDA toolkit does
# for the driver (lib64/stubs/libcuda.so), which PyPI does not have at all: for each of
# libcuda, libcublas, libcublasLt, libcurand and libnvrtc, one empty function per entry
# point that cudarc's bindings declare (cudarc is candle's CUDA binding; its declarations
# are generated from NVIDIA's headers), under the real library's soname. A binary linked
# this way loads the real libraries of the machine it runs on; the stubs are never on the
# run-time library path. This saves downloading 600 MB of cuBLAS and cuRAND per CI run.
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
)

# (cudarc module, soname) of each library candle links against.
stubs=(
  "driver libcuda.so.1"
  "cublas libcublas.so.13"
  "cublaslt libcublasLt.so.13"
  "curand libcurand.so.10"
  "nvrtc libnvrtc.so.13"
)

if [[ ! -f "$dir/.complete" ]]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
    "${packages[@]}" >&2

  # Unversioned names for the linker (the wheels ship only the sonames).
  for lib in "$top"/lib/lib*.so.*; do
    base="${lib%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
  done

  # The link stubs: every entry point cudarc's bindings declare, per library.
  cudarc_src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d \
    -name 'cudarc-0.19.*' 2>/dev/null | sort | tail -n 1)"
  if [[ -z "$cudarc_src" ]]; then
    cargo fetch --locked >&2
    cudarc_src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d \
      -name 'cudarc-0.19.*' | sort | tail -n 1)"
  fi
  mkdir -p "$top/lib/stubs"
  for entry in "${stubs[@]}"; do
    read -r module soname <<< "$entry"
    name="${soname%%.so.*}"
    grep -ohE 'pub unsafe fn [A-Za-z0-9_]+\(' "$cudarc_src/src/$module/sys/mod.rs" \
      | sed -E 's/pub unsafe fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u \
      > "$top/lib/stubs/$name.c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$top/lib/stubs/$name.so" "$top/lib/stubs/$name.c"
  done
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
