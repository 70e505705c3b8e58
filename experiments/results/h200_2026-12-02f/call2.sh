#!/bin/bash
# call 2: base (939e6a0) vs new (working tree: contributor records per chunk, R = min(K, 10))
set -x
ROOT=$PWD
LOG=$OUT/call2_log.txt
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec > >(tee -a $LOG) 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv
[ -d /tmp/site/diffusers ] || pip install -q --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
python3 -c "import jax, jaxlib; print(jax.__version__, jax.devices())"
(cmake -S scratch/basetree/ffi -B /tmp/b_base -DGAEDIT_ENABLE_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/tmp/base_cfg.log 2>&1 && cmake --build /tmp/b_base -j8 >/tmp/base_build.log 2>&1 && cmake --install /tmp/b_base >/dev/null 2>&1; echo base-build rc=$?) & P1=$!
(cmake -S ffi -B /tmp/b_new -DGAEDIT_ENABLE_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/tmp/new_cfg.log 2>&1 && cmake --build /tmp/b_new -j8 >/tmp/new_build.log 2>&1 && cmake --install /tmp/b_new >/dev/null 2>&1; echo new-build rc=$?) & P2=$!
wait $P1 $P2
tail -n 3 /tmp/base_build.log /tmp/new_build.log
ls scratch/basetree/gaedit_jax/_native gaedit_jax/_native
export PYTHONPATH=$ROOT:/tmp/site
timeout 200 python3 -m pytest -q -n 8 -m gpu tests/test_rasterizer.py tests/test_rasterizer_gpu.py tests/test_native_library.py -p no:cacheprovider > $OUT/call2_gpu_tests.log 2>&1; echo tests rc=$?; tail -n 15 $OUT/call2_gpu_tests.log
unset XLA_PYTHON_CLIENT_PREALLOCATE
B="experiments/bench_rasterizer.py --suite anchors --warmup 3 --repeat 20 --views 1 --sizes 1000000"
for round in 3 4; do
 for t in 16 8; do
  [ $round = 4 ] && [ $t = 8 ] && continue
  if [ $t = 8 ]; then CAP=1000000:1.9; else CAP=1000000:1.4; fi
  for k in 0 10; do
   echo "== round $round tile $t wabe $k base"; (cd scratch/basetree && PYTHONPATH=$PWD:/tmp/site timeout 120 python3 $B --tile $t --capacities $CAP --wabe-k $k 2>&1 | grep -E "^\|" | tail -2)
   echo "== round $round tile $t wabe $k new"; timeout 120 python3 $B --tile $t --capacities $CAP --wabe-k $k 2>&1 | grep -E "^\|" | tail -2
  done
 done
done
