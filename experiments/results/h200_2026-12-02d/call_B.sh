#!/bin/bash
# call B: same-run tables with gsplat (tiles 16 and 8), train and edit step profiles
T0=$(date +%s); log() { echo "[$(date +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a $OUT/call_log_B.txt; }
log start; nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader | tee -a $OUT/call_log_B.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:/tmp/site
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 TORCH_EXTENSIONS_DIR=/tmp/te
cmake -S ffi -B /tmp/b_new -DGAEDIT_ENABLE_CUDA=ON > /tmp/bn.log 2>&1 && cmake --build /tmp/b_new -j16 >> /tmp/bn.log 2>&1 && cmake --install /tmp/b_new >> /tmp/bn.log 2>&1 || { tail -30 /tmp/bn.log > $OUT/build_fail.txt; log BUILD FAIL; exit 1; }
log built; git log --oneline -1 2>/dev/null | tee -a $OUT/call_log_B.txt
python3 -c "import jax, torch, gsplat; print(jax.__version__, torch.__version__, gsplat.__version__)" 2>&1 | tail -1 | tee -a $OUT/call_log_B.txt
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest -q -n 8 -m gpu tests/test_rasterizer.py tests/test_rasterizer_gpu.py tests/test_native_library.py -p no:cacheprovider > $OUT/gpu_tests_final.log 2>&1; log "gpu tests rc=$?"; tail -2 $OUT/gpu_tests_final.log
for t in 8 16; do
  timeout 200 python3 experiments/bench_rasterizer.py --suite anchors --gsplat --tile $t > $OUT/anchors_gsplat_t$t.md 2>&1; log "gsplat tile $t rc=$?"
done
timeout 150 python3 experiments/profile_step.py --workload edit --lpips-dtype bfloat16 --out $OUT/profile_edit_bf16.json > $OUT/profile_edit_bf16.log 2>&1; log "edit rc=$?"
timeout 120 python3 experiments/profile_step.py --workload train --out $OUT/profile_train16.json > $OUT/profile_train16.log 2>&1; log "train rc=$?"
log done
