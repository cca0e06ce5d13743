# Sourced by the call scripts (from the copy's root): the carried wheels and Ray onto the GPU image's Python
# (Ray unpacks in the background: `wait` before using it), the card's name and the time into $OUT/gpu.txt.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site _whl/*.whl > /tmp/pip.log 2>&1
(nvidia-smi --query-gpu=name,driver_version --format=csv; date -u '+%F %T UTC') | tee $OUT/gpu.txt
[ -f _ray/ray.tar.xz ] && python3 -c "import tarfile; tarfile.open('_ray/ray.tar.xz').extractall('/tmp/site')" &
