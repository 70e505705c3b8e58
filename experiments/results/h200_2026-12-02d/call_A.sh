#!/bin/bash
# call A: split backward: build base + new, GPU tests, alternating bench, ncu
T0=$(date +%s); log() { echo "[$(date +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a $OUT/call_log.txt; }
log start; nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader | tee -a $OUT/call_log.txt
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
(cmake -S scratch/base/ffi -B /tmp/b_base -DGAEDIT_ENABLE_CUDA=ON > /tmp/bb.log 2>&1 && cmake --build /tmp/b_base -j8 >> /tmp/bb.log 2>&1) &
cmake -S ffi -B /tmp/b_new -DGAEDIT_ENABLE_CUDA=ON > /tmp/bn.log 2>&1 && cmake --build /tmp/b_new -j8 >> /tmp/bn.log 2>&1 || { tail -30 /tmp/bn.log > $OUT/build_new_fail.txt; log BUILD FAIL; exit 1; }
wait; log built; cmake --install /tmp/b_new >> /tmp/bn.log 2>&1; log installed new
timeout 200 python3 -m pytest -q -n 8 -m gpu tests/test_rasterizer.py tests/test_rasterizer_gpu.py tests/test_native_library.py -p no:cacheprovider > $OUT/gpu_tests_split.log 2>&1; log "gpu tests rc=$?"; tail -3 $OUT/gpu_tests_split.log
B="python3 experiments/bench_rasterizer.py --suite anchors --warmup 3 --repeat 20"
for r in 1 2; do
  for b in base new; do
    echo "## round $r build $b tile 8" >> $OUT/anchors_split_t8.txt
    GAEDIT_NATIVE_DIR=/tmp/b_$b timeout 80 $B --tile 8 --sizes 100000,1000000 --views 1,16 --capacities 100000:3,1000000:1.9 2>&1 | grep "^| [0-9]" >> $OUT/anchors_split_t8.txt
  done; log "t8 round $r"
done
for c in 64 128 512; do
  echo "## new chunk $c tile 8" >> $OUT/anchors_split_t8.txt
  GAEDIT_BWD_CHUNK=$c GAEDIT_NATIVE_DIR=/tmp/b_new timeout 60 $B --tile 8 --sizes 100000,1000000 --views 1 --capacities 100000:3,1000000:1.9 2>&1 | grep "^| [0-9]" >> $OUT/anchors_split_t8.txt
done; log chunks
for r in 1 2; do
  for b in base new; do
    echo "## round $r build $b tile 16" >> $OUT/anchors_split_t16.txt
    GAEDIT_NATIVE_DIR=/tmp/b_$b timeout 80 $B --tile 16 --sizes 100000,1000000 --views 1,16 --capacities 100000:1.9,1000000:1.4 2>&1 | grep "^| [0-9]" >> $OUT/anchors_split_t16.txt
  done; log "t16 round $r"
done
echo "## new wabe-k 10 tile 8" >> $OUT/anchors_split_t8.txt
GAEDIT_NATIVE_DIR=/tmp/b_new timeout 80 $B --tile 8 --sizes 100000,1000000 --views 1,16 --capacities 100000:3,1000000:1.9 --wabe-k 10 2>&1 | grep "^| [0-9]" >> $OUT/anchors_split_t8.txt; log wabe
for b in base new; do
  GAEDIT_NATIVE_DIR=/tmp/b_$b timeout 60 ncu --metrics gpu__time_duration.sum --print-summary per-kernel python3 experiments/profile_rasterizer.py --n 1000000 --views 1 --tile 8 --isect-per-gaussian 1.9 > $OUT/ncu_1m_x1_t8_$b.txt 2>&1; log "ncu $b rc=$?"
done
log done
