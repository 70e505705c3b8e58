#!/bin/bash
T0=$(date +%s); log() { echo "[$(date +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a $OUT/call_log_C.txt; }
log start
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
cmake -S ffi -B /tmp/b_new -DGAEDIT_ENABLE_CUDA=ON > /tmp/bn.log 2>&1 && cmake --build /tmp/b_new -j16 >> /tmp/bn.log 2>&1 && cmake --install /tmp/b_new >> /tmp/bn.log 2>&1 || { tail -30 /tmp/bn.log > $OUT/build_fail.txt; log BUILD FAIL; exit 1; }
log built
timeout 150 python3 -m pytest -q -n 8 -m gpu tests/test_rasterizer.py tests/test_rasterizer_gpu.py tests/test_native_library.py -p no:cacheprovider > $OUT/gpu_tests_landed.log 2>&1; log "gpu tests rc=$?"; tail -1 $OUT/gpu_tests_landed.log
