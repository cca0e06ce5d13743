#!/bin/bash
# A short device call: issue 19 test + diagnosis, GPU encoder tests, Ray GPU actor, encoder profile and bench.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site _whl/*.whl > $OUT/pip.log 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
(timeout 85 python3 benchmarks/check_batch_gpu.py > $OUT/check_batch.log 2>&1; echo "check rc=$?" >> $OUT/check_batch.log) &
python3 -c "import tarfile; tarfile.open('_ray/ray.tar.xz').extractall('/tmp/site')" &
timeout 85 python3 -m pytest -q -p no:cacheprovider -rxXf tests/test_batch_generate_gpu.py tests/test_cuda_encoder.py \
  > $OUT/pytest.log 2>&1
echo "pytest rc=$?" >> $OUT/pytest.log
wait
grep -E "passed|failed|FAILED|XPASS|XFAIL|Error|rc=" $OUT/pytest.log | tail -20
grep -v "^\s*$" $OUT/check_batch.log | grep -v Warning | tail -30
timeout 40 python3 benchmarks/bench_index.py --no-store --device cuda --random minilm-l6 --actors 1 --repeat 8 \
  --batch-docs 16 > $OUT/bench_index_minilm.log 2>&1; tail -5 $OUT/bench_index_minilm.log
timeout 20 python3 benchmarks/profile_encoder_stages.py > $OUT/profile.log 2>&1; cat $OUT/profile.log
timeout 60 python3 benchmarks/bench_gpu.py --only bert-minilm --no-matvec > $OUT/bench_gpu_bert.log 2>&1; tail -8 $OUT/bench_gpu_bert.log
