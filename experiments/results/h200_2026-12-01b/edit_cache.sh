# the gaedit edit compilation cache experiment: same command twice in fresh processes
W=${W:-/tmp/w}; SIZE=${SIZE:-full}; IT=${IT:-20}
G="python3 -m gaedit_jax.cli"
mkdir -p $W
[ -d $W/data ] || $G synth $W/data > $W/synth.log 2>&1 || { echo synth failed; tail $W/synth.log; exit 1; }
[ -d $W/recon ] || $G reconstruct --data $W/data --out $W/recon --iterations ${RIT:-600} --eval-interval 0 --no-progress > $W/recon.log 2>&1 || { echo recon failed; tail $W/recon.log; exit 1; }
[ -d $W/ip2p ] || python3 scratch/write_models.py $W/ip2p $W/lpips $SIZE > $W/models.log 2>&1 || { echo models failed; tail $W/models.log; exit 1; }
rm -rf $W/cc; export GAEDIT_COMPILE_CACHE=$W/cc JAX_EXPLAIN_CACHE_MISSES=1
for r in 1 2; do
  s=$(date +%s.%N)
  $G edit --avatar $W/recon --out $W/e$r --prompt "turn him into a statue" --ip2p $W/ip2p --lpips-weights $W/lpips \
     --iterations $IT --eval-every $IT --no-progress --overwrite $EXTRA > $W/edit$r.log 2>&1; rc=$?
  e=$(date +%s.%N); echo "edit run $r rc=$rc wall $(python3 -c "print(round($e-$s,1))") s"
  grep -c "PERSISTENT COMPILATION CACHE MISS" $W/edit$r.log
  python3 -c "import json;d=json.load(open('$W/e$r/edit_summary.json'));print(d['compilations'])" 2>&1 | tail -1
done
