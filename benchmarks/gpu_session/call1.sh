#!/bin/bash
# One device call: issue 19 diagnosis and tests, Ray GPU actor, encoder profile + bench (run from the copy's root).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site _whl/*.whl > $OUT/pip.log 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
# phase A, correctness (in parallel; no timings)
(timeout 125 python3 benchmarks/check_batch_gpu.py > $OUT/check_batch.log 2>&1; echo "check rc=$?" >> $OUT/check_batch.log) &
python3 -c "import tarfile; tarfile.open('_ray/ray.tar.xz').extractall('/tmp/site')" &
timeout 125 python3 -m pytest -q -p no:cacheprovider -rxXf tests/test_batch_generate_gpu.py tests/test_cuda_encoder.py \
  > $OUT/pytest.log 2>&1
echo "pytest rc=$?" >> $OUT/pytest.log
wait
grep -E "passed|failed|FAILED|XPASS|XFAIL|Error|rc=" $OUT/pytest.log | tail -20
grep -v "^\s*$" $OUT/check_batch.log | grep -v Warning | tail -40
# phase B, timings (one at a time)
for shape in minilm-l6 bert-base; do
  timeout 45 python3 benchmarks/bench_index.py --no-store --device cuda --random $shape --actors 1 --repeat 8 \
    --batch-docs 16 > $OUT/bench_index_$shape.log 2>&1
  tail -5 $OUT/bench_index_$shape.log
done
timeout 25 python3 benchmarks/profile_encoder_stages.py > $OUT/profile.log 2>&1; cat $OUT/profile.log
timeout 75 python3 benchmarks/bench_gpu.py --only bert-minilm --no-matvec --json $OUT/bench_gpu_bert.json > $OUT/bench_gpu_bert.log 2>&1; tail -12 $OUT/bench_gpu_bert.log
