#!/bin/bash
# One device call, run from the copy's root: issue 19's batch test and diagnosis, the GPU encoder tests, the Ray
# GPU actor (issue 24), the encoder profile and bench (issue 25).
#     bash benchmarks/gpu_session/call.sh [full|short|shortest]
# full ~320 s (Ray actor on MiniLM and BERT-base shapes), short ~240 s (MiniLM only), shortest ~150 s (the batch
# test, its diagnosis and the MiniLM actor; no encoder work).
set -u
MODE=${1:-full}
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
