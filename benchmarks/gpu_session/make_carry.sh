#!/bin/bash
# Prepare a copy of this branch for the GPU machine in DEST (an ignored folder of the checkout that `run` ships,
# e.g. /work/main/.gpu3; pass it in `carry`): the tree without the large test data, the wheels the GPU image lacks
# (pytest, platformdirs, Ray's jsonschema) in _whl/, and Ray 2.60 stripped of what indexing does not use (jars,
# RLlib, Serve, Train, Tune, the dashboard's web client, tests; binaries stripped) as _ray/ray.tar.xz (~24 MB).
#     benchmarks/gpu_session/make_carry.sh /work/main/.gpu3 [RAY_CP312_WHEEL]
# Then on the device: cd .gpu3 && bash benchmarks/gpu_session/call.sh [full|short|shortest]
set -eu
DEST=$1
RAY_WHL=${2:-}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$DEST" && mkdir -p "$DEST"
git -C "$REPO" archive HEAD | tar -x -C "$DEST"
rm -rf "$DEST"/tests/data/{llama-vocab,fidelity,ggml_exact,axe-core}
mkdir -p "$DEST/_whl" "$DEST/_ray"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST/_whl" \
  pytest pluggy iniconfig pygments packaging platformdirs jsonschema jsonschema-specifications referencing rpds-py attrs
if [ -n "$RAY_WHL" ]; then
  work=$(mktemp -d)
  (cd "$work" && unzip -q "$RAY_WHL" && rm -rf ray/jars ray/rllib ray/dashboard/client ray/serve ray/llm ray/train \
     ray/tune ray/autoscaler/{gcp,aws,azure} && find ray -type d \( -name tests -o -name __pycache__ \) -prune \
     -exec rm -rf {} + && find ray -name "*.so" -exec strip --strip-unneeded {} \; && \
     strip --strip-unneeded ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server && \
     tar -cJf "$DEST/_ray/ray.tar.xz" ray ray-*.dist-info)
  rm -rf "$work"
fi
du -sh "$DEST"
