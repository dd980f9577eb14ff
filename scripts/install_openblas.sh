#!/usr/bin/env bash
# Fast BLAS for MLX on Linux: Debian's OpenBLAS, preloaded at run time by finetune_mlx/blas.py.
# Installed when apt is available and we run as root; otherwise a warning and we go on.
set -u
[ "$(uname -s)" = "Linux" ] || exit 0
if ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then
  echo "openblas: present ($(ldconfig -p | grep -m1 'libopenblas.so.0' | awk '{print $NF}'))"
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "openblas: installing Debian's libopenblas0-pthread for fast MLX matmul"
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 ||
     { apt-get update -qq >/dev/null 2>&1 &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1; }; then
    echo "openblas: installed"
    exit 0
  fi
  echo "warning: could not install libopenblas0-pthread; MLX will use its slow reference BLAS" >&2
  exit 0
fi
echo "warning: no OpenBLAS and no root apt-get: MLX will use its slow reference BLAS" \
     "(install libopenblas0-pthread or your distro's openblas for ~30x faster matmul)" >&2
exit 0
