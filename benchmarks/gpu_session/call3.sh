#!/bin/bash
# The shortest device call (about 150 s): issue 19's test and diagnosis, then the Ray GPU actor on MiniLM.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site _whl/*.whl > $OUT/pip.log 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
(timeout 90 python3 benchmarks/check_batch_gpu.py > $OUT/check_batch.log 2>&1; echo "check rc=$?" >> $OUT/check_batch.log) &
python3 -c "import tarfile; tarfile.open('_ray/ray.tar.xz').extractall('/tmp/site')" &
timeout 90 python3 -m pytest -q -p no:cacheprovider -rxXf tests/test_batch_generate_gpu.py > $OUT/pytest.log 2>&1
echo "pytest rc=$?" >> $OUT/pytest.log
wait
grep -E "passed|failed|FAILED|XPASS|XFAIL|Error|rc=" $OUT/pytest.log | tail -12
grep -v "^\s*$" $OUT/check_batch.log | grep -v Warning | tail -30
timeout 40 python3 benchmarks/bench_index.py --no-store --device cuda --random minilm-l6 --actors 1 --repeat 8 \
  --batch-docs 16 > $OUT/bench_index_minilm.log 2>&1; tail -5 $OUT/bench_index_minilm.log
