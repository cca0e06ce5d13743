#!/bin/bash
# One device call for issues 19, 25 and 27, run from the copy's root with the pruned llama.cpp source carried as
# llama-src.tar.xz (or a build carried as llama-bin.tar.xz.*): builds llama.cpp's CUDA llama-bench and
# llama-batched-bench in the background while the GPU correctness tests run (the several-sequence decode with and
# without CUDA graphs, the layer split on two logical devices of one GPU, the encoder), then bench_batched on
# random Mistral-7B-shape Q4_0 and Q4_K files beside llama-batched-bench -ngl 99, and sends the build back.
#     bash benchmarks/gpu_session/batched_h100.sh [tests|bench|all]
set -u
MODE=${1:-all}
. benchmarks/gpu_session/setup.sh
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
LB=/tmp/llama/build/bin
if ls llama-bin.tar.xz.* >/dev/null 2>&1; then
  mkdir -p /tmp/llama/build && cat llama-bin.tar.xz.* | tar -xJ -C /tmp/llama/build && el "llama.cpp build carried"
else
  ( mkdir -p /tmp/llama && tar -xJf llama-src.tar.xz -C /tmp/llama && cd /tmp/llama && \
    cmake -S llama-src -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
      -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF -DCMAKE_BUILD_TYPE=Release > /tmp/llama/cmake.log 2>&1 && \
    nice -n 5 cmake --build build --target llama-bench llama-batched-bench -j 13 > /tmp/llama/build.log 2>&1; \
    echo "BUILD_DONE $?" >> /tmp/llama/build.log ) &
fi
if [ "$MODE" != bench ]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -rxXfs tests/test_cuda_steps.py tests/test_batch_generate_gpu.py \
    > $OUT/pytest_batch.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest_batch.log
  el batch; grep -E "passed|failed|FAILED|XPASS|XFAIL|Error|rc=" $OUT/pytest_batch.log | tail -12
  timeout 120 python3 -m pytest -q -p no:cacheprovider -rxXfs tests/test_split_cuda.py tests/test_cuda_encoder.py \
    > $OUT/pytest_split_enc.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest_split_enc.log
  el split+encoder; grep -E "passed|failed|FAILED|SKIP|Error|rc=" $OUT/pytest_split_enc.log | tail -14
fi
[ "$MODE" = tests ] && exit 0
if [ -n "${ENCODER_TESTS:-}" ]; then
  timeout 170 python3 -m pytest -q -p no:cacheprovider -rxXfs tests/test_cuda_encoder.py > $OUT/pytest_encoder.log 2>&1
  echo "pytest rc=$?" >> $OUT/pytest_encoder.log; el encoder-tests
  grep -E "passed|failed|FAILED|Error|rc=" $OUT/pytest_encoder.log | tail -10
fi
while [ ! -x $LB/llama-batched-bench ] && ! grep -q BUILD_DONE /tmp/llama/build.log 2>/dev/null; do sleep 5; done
el "build: $(tail -1 /tmp/llama/build.log 2>/dev/null)"; grep -q "BUILD_DONE 0" /tmp/llama/build.log 2>/dev/null || \
  { tail -20 /tmp/llama/cmake.log; grep -i -A5 error /tmp/llama/build.log | head -30; }
if [ ! -f llama-bin.tar.xz.00 ] && [ -x $LB/llama-batched-bench ]; then
  ( cd /tmp/llama/build && tar -cf - bin/llama-bench bin/llama-batched-bench $(find . -name "*.so*" | sed 's|^\./||') \
    | xz -T8 -6 | split -b 15M -d - $OUT/llama-bin.tar.xz. ) &
fi
[ -z "${SKIP_ENCODER:-}" ] && timeout 90 python3 benchmarks/profile_encoder_stages.py > $OUT/profile.log 2>&1; grep -v Warning $OUT/profile.log | tail -40
[ -z "${SKIP_ENCODER:-}" ] && timeout 130 python3 benchmarks/bench_gpu.py --only bert-minilm --no-matvec --json $OUT/bench_gpu_bert.json \
  > $OUT/bench_gpu_bert.log 2>&1; tail -10 $OUT/bench_gpu_bert.log
el encoder
for t in Q4_0 Q4_K; do
  timeout ${BATCH_LIMIT:-240} python3 benchmarks/bench_batched.py --device cuda --random llama:mistral-7b:$t --npp 128 --ntg 32 \
    --npl ${NPL:-1,4,16,64} --llama-batched-bench $LB/llama-batched-bench >> $OUT/bench_batched.log 2>&1
  el "batched $t"; grep -v Warning $OUT/bench_batched.log | tail -8
done
wait
ls -la $OUT
