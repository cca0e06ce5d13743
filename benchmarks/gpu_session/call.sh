#!/bin/bash
# One device call, run from the copy's root: issue 19's batch test and diagnosis, the GPU encoder tests, the Ray
# GPU actor (issue 24), the encoder profile and bench (issue 25).
#     bash benchmarks/gpu_session/call.sh [full|short|shortest|lean|encoder]
# full ~320 s (Ray actor on MiniLM and BERT-base shapes), short ~240 s (MiniLM only), shortest ~150 s (the batch
# test, its diagnosis and the MiniLM actor; no encoder work); lean ~420 s, no Ray (a carry made without it):
# the batch tests (diagnosis only if they fail), the encoder tests, profile and bench, and bench_batched on a
# random TinyLlama-shaped Q4_0 with several-row CUDA graphs on and off.
# encoder ~300 s: only the encoder tests, the profile and the BERT bench (issue 25's embeddings).
set -u
MODE=${1:-full}
# the encoder tests, the per-stage profile and the BERT bench (issue 25), for the encoder and lean modes
encoder_steps() {
  timeout 150 python3 -m pytest -q -p no:cacheprovider -rxXfs tests/test_cuda_encoder.py > $OUT/pytest_encoder.log 2>&1
  echo "pytest rc=$?" >> $OUT/pytest_encoder.log
  grep -E "passed|failed|FAILED|Error|SKIP|rc=" $OUT/pytest_encoder.log | tail -12
  timeout 60 python3 benchmarks/profile_encoder_stages.py > $OUT/profile.log 2>&1; grep -v Warning $OUT/profile.log
  timeout 120 python3 benchmarks/bench_gpu.py --only bert-minilm --no-matvec --json $OUT/bench_gpu_bert.json \
    > $OUT/bench_gpu_bert.log 2>&1
  grep -E "embedkit|torch|^\|" $OUT/bench_gpu_bert.log | tail -16
}
if [ "$MODE" = encoder ]; then
  . benchmarks/gpu_session/setup.sh
  encoder_steps
  exit 0
fi
if [ "$MODE" = lean ]; then
  . benchmarks/gpu_session/setup.sh
  timeout 150 python3 -m pytest -q -p no:cacheprovider -rxXf tests/test_cuda_steps.py tests/test_batch_generate_gpu.py \
    > $OUT/pytest_batch.log 2>&1
  echo "pytest rc=$?" >> $OUT/pytest_batch.log
  grep -E "passed|failed|FAILED|XPASS|XFAIL|Error|rc=" $OUT/pytest_batch.log | tail -12
  if ! grep -q "pytest rc=0" $OUT/pytest_batch.log; then
    timeout 120 python3 benchmarks/check_batch_gpu.py > $OUT/check_batch.log 2>&1
    grep -v "^\s*$" $OUT/check_batch.log | grep -v Warning | tail -40
  fi
  encoder_steps
  for g in on off; do
    timeout 70 python3 benchmarks/bench_batched.py --device cuda --random llama:tinyllama-1.1b:Q4_0 --npp 128 \
      --ntg 32 --npl 1,4,8 --batch-graphs $g >> $OUT/bench_batched.log 2>&1
  done
  grep -v Warning $OUT/bench_batched.log | tail -16
  exit 0
fi
case $MODE in
  full) LIMIT=125; TESTS="tests/test_batch_generate_gpu.py tests/test_cuda_encoder.py"; SHAPES="minilm-l6 bert-base" ;;
  short) LIMIT=85; TESTS="tests/test_batch_generate_gpu.py tests/test_cuda_encoder.py"; SHAPES=minilm-l6 ;;
  shortest) LIMIT=90; TESTS=tests/test_batch_generate_gpu.py; SHAPES=minilm-l6 ;;
  *) echo "call.sh: mode '$MODE': expected full, short or shortest" >&2; exit 2 ;;
esac
. benchmarks/gpu_session/setup.sh
# correctness first, in parallel (no timings)
(timeout $LIMIT python3 benchmarks/check_batch_gpu.py > $OUT/check_batch.log 2>&1; echo "check rc=$?" >> $OUT/check_batch.log) &
timeout $LIMIT python3 -m pytest -q -p no:cacheprovider -rxXf $TESTS > $OUT/pytest.log 2>&1
echo "pytest rc=$?" >> $OUT/pytest.log
wait
grep -E "passed|failed|FAILED|XPASS|XFAIL|Error|rc=" $OUT/pytest.log | tail -20
grep -v "^\s*$" $OUT/check_batch.log | grep -v Warning | tail -40
# timings, one at a time
for shape in $SHAPES; do
  timeout 45 python3 benchmarks/bench_index.py --no-store --device cuda --random $shape --actors 1 --repeat 8 \
    --batch-docs 16 > $OUT/bench_index_$shape.log 2>&1
  tail -5 $OUT/bench_index_$shape.log
done
[ "$MODE" = shortest ] && exit 0
timeout 25 python3 benchmarks/profile_encoder_stages.py > $OUT/profile.log 2>&1; cat $OUT/profile.log
timeout 75 python3 benchmarks/bench_gpu.py --only bert-minilm --no-matvec --json $OUT/bench_gpu_bert.json \
  > $OUT/bench_gpu_bert.log 2>&1
tail -12 $OUT/bench_gpu_bert.log
