"""Roofline measurements for the InstructPix2Pix edit call: how far is it from the hardware limit?

  python experiments/roofline_ip2p.py --out roofline.json          # full-size SD 1.5 (H100)
  python experiments/roofline_ip2p.py --tiny --batch 3 --reps 2    # CPU smoke test
  python experiments/roofline_ip2p.py --table roofline.json        # re-print a saved run

Same models and random bf16 parameters as experiments/bench_ip2p.py. Reports
1. FLOPs (XLA cost analysis of the compiled call), median time and achieved TFLOP/s of the UNet
   forward at --batch, the VAE encode (2 x --images) and decode (--images), and the whole edit;
2. a FLOP breakdown counted from the optimized HLO text: convolutions, dense dots, attention
   (batched dots and cuDNN fused-attention calls), with loop bodies multiplied by their trip count;
3. bf16 ceilings on the same device: a large matmul, the UNet's commonest 3x3 convs, copy bandwidth;
4. the TFLOP/s the target (--target-ratio x --torch-ms) needs, against those ceilings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_ip2p import SD15_UNET, SD15_VAE, _median_ms, log, random_ip2p, unet_step_fn  # noqa: E402

# ---------------------------------------------------------------------------------------------
# FLOPs from optimized HLO text
# ---------------------------------------------------------------------------------------------
# Only matmul-class ops are counted: they are what tensor cores run; elementwise work (GroupNorm,
# SiLU, ...) is in XLA's cost analysis but not here. "dense" = every kernel tap (what an implicit
# GEMM computes), "valid" = taps that land inside the unpadded input (what XLA's cost analysis
# counts), so "valid" + elementwise ~= cost analysis, which checks this parser.

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b[a-z][a-z0-9]*\[([0-9,]*)\]")
_CALLS = re.compile(
  r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation"
  r"|called_computations)=(\{[^}]*\}|%?[\w.\-]+)"
)
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
# For the cross-check with XLA's cost analysis only: it adds 1 FLOP per output element of these
# ops (and per input element of a reduce), and counts the transcendental ones separately.
_ELEMENTWISE = set(
  "add subtract multiply divide maximum minimum negate abs compare convert select clamp and or xor "
  "not sign floor ceil round-nearest-afz round-nearest-even remainder".split()
)
_TRANSCENDENTAL = set(
  "exponential exponential-minus-one log log-plus-one tanh logistic erf sine cosine sqrt rsqrt cbrt power atan2".split()
)


def _dims(shape: str):
  """Dimensions of the first array in a shape string (a tuple's first element), or None."""
  m = _ARRAY.search(shape or "")
  return [int(d) for d in m.group(1).split(",") if d] if m else None


def _split_top(s: str):
  """Split at commas outside brackets."""
  out, depth, cur = [], 0, ""
  for ch in s:
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
    else:
      cur += ch
  return out + ([cur.strip()] if cur.strip() else [])


def parse_hlo(text: str):
  """{computation: [(name, shape, opcode, [operand], attrs)]} and the entry computation's name."""
  comps, entry, cur = {}, None, None
  for line in text.splitlines():
    if not line.strip():
      continue
    if not line[0].isspace():  # computation header / end, or module metadata
      s = line.rstrip()
      if s.endswith("{") and not s.startswith("HloModule"):
        m = re.match(r"(ENTRY\s+)?%?([^\s(]+)", s)
        cur = m.group(2)
        comps[cur] = []
        entry = cur if m.group(1) else entry
      elif s == "}":
        cur = None
      continue
    m = _INSTR.match(line) if cur is not None else None
    if not m:
      continue
    name, shape, op, rest = m.groups()
    depth, j = 1, 0
    for j, ch in enumerate(rest):  # the operand list ends at its matching ")"
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        break
    comps[cur].append((name, shape, op, _split_top(rest[:j]), rest[j + 1 :]))
  return comps, entry


def _ints(m):
  return [int(x) for x in re.findall(r"\d+", m.group(1))] if m else []


def _conv_flops(out, lhs, rhs, attrs):
  """(dense, valid) FLOPs of a convolution with XLA dim_labels/window attributes, or None."""
  lab = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", attrs)
  if not (lab and out and lhs and rhs):
    return None
  ll, rl, ol = lab.groups()
  if not (len(ll) == len(lhs) and len(rl) == len(rhs) and len(ol) == len(out)) or "f" not in ll:
    return None
  fgc = int((re.search(r"feature_group_count=(\d+)", attrs) or [0, 1])[1])
  cin = lhs[ll.index("f")] // fgc
  win = dict(kv.split("=", 1) for kv in (re.search(r"window=\{([^}]*)\}", attrs) or [0, ""])[1].split())
  spatial = sorted(c for c in rl if c.isdigit())
  taps, valid = 1, 1
  for k, d in enumerate(spatial):
    get = lambda key, default: int(win[key].split("x")[k].split("_")[0]) if key in win else default
    n, m, ks = lhs[ll.index(d)], out[ol.index(d)], rhs[rl.index(d)]
    stride, lo, ld, rd = get("stride", 1), get("pad", 0), get("lhs_dilate", 1), get("rhs_dilate", 1)
    taps *= ks
    valid *= sum(
      1
      for o in range(m)
      for t in range(ks)  # XLA's GetConvolutionFlops rule
      if (i := o * stride - lo + t * rd) % ld == 0 and 0 <= i // ld < n
    )
  non_spatial = math.prod(out) // math.prod(out[ol.index(d)] for d in spatial)
  return 2 * math.prod(out) * taps * cin, 2 * non_spatial * cin * valid


def _is_attention(attrs, batched):
  # The UNet's and VAE's attention products are einsums (op_name holds the spec, "...->...");
  # its dense layers are plain dot_generals. Without metadata fall back to "batched".
  m = re.search(r'op_name="([^"]*)"', attrs)
  return batched and (m is None or "->" in m.group(1))


def _instr_flops(ins, shapes):
  """(kind, category, dense, valid) of one instruction; category conv | dot | attention |
  unparsed; None for ops without matmul-class work."""
  name, shape, op, operands, attrs = ins

  def operand(i):  # inline shape if printed, else the definition's
    if i >= len(operands):
      return None
    s = operands[i]
    return _dims(s) if "[" in s else _dims(shapes.get(s.split()[-1].lstrip("%"), ""))

  out = _dims(shape)
  if op == "convolution":
    f = _conv_flops(out, operand(0), operand(1), attrs)
    return ("convolution", "conv", *f) if f else ("convolution", "unparsed", 0, 0)
  if op == "dot":
    lhs, lc = operand(0), _ints(re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs))
    if not (out and lhs):
      return ("dot", "unparsed", 0, 0)
    f = 2 * math.prod(out) * math.prod(lhs[c] for c in lc)
    batched = bool(_ints(re.search(r"lhs_batch_dims=\{([\d,]*)\}", attrs)))
    return ("dot (attention QK^T, PV)", "attention", f, f) if _is_attention(attrs, batched) else ("dot", "dot", f, f)
  if op != "custom-call":
    return None
  t = re.search(r'custom_call_target="([^"]+)"', attrs)
  target = t.group(1) if t else "?"
  kind = f"custom-call {target}"
  cfg = attrs.replace('\\"', '"')  # backend_config is JSON, or an escaped string
  if "conv" in target.lower() and "Forward" in target:  # cuDNN conv (+bias/activation/graph)
    f = _conv_flops(out, operand(0), operand(1), attrs)
    return (kind, "conv", *f) if f else (kind, "unparsed", 0, 0)
  if "fmha" in target and "Backward" not in target:  # cuDNN fused attention, forward
    m = re.search(r'"intermediate_tensor_shape"\s*:\s*\{[^}]*?"dimensions"\s*:\s*\[([^\]]*)\]', cfg)
    q, v = operand(0), operand(2)
    if not (m and q and v):
      return (kind, "unparsed", 0, 0)
    b, h, tq, tk = _ints(m)  # scores [B, heads, Tq, Tk]; q, v in any layout
    f = 2 * b * h * tq * tk * (math.prod(q) // (b * h * tq) + math.prod(v) // (b * h * tk))
    return (kind, "attention", f, f)
  if "cublas" in target or "gemm" in target.lower():  # cuBLAS(Lt) gemm
    m = re.search(r'"lhs_contracting_dimensions"\s*:\s*\[([^\]]*)\]', cfg)
    lhs = operand(0)
    if not (m and out and lhs):
      return (kind, "unparsed", 0, 0)
    f = 2 * math.prod(out) * math.prod(lhs[c] for c in _ints(m))
    batched = bool(_ints(re.search(r'"lhs_batch_dimensions"\s*:\s*\[([^\]]*)\]', cfg)))
    att = _is_attention(attrs, batched)
    return (kind + (" (attention QK^T, PV)" if att else ""), "attention" if att else "dot", f, f)
  return (kind, "unparsed", 0, 0)


def hlo_flops(text: str) -> dict:
  """Matmul-class FLOPs of an optimized HLO module, walking the call graph from ENTRY so that
  fused computations count once per call site and while bodies once per known trip. Also, for
  the cross-check, XLA-cost-analysis-style totals with every loop body counted once."""
  comps, entry = parse_hlo(text)
  kinds, loops, check = {}, [], dict(flops=0, transcendentals=0)

  def visit(comp, mult, scalar, depth=0):
    shapes = {ins[0]: ins[1] for ins in comps[comp]}
    for ins in comps[comp]:
      r = _instr_flops(ins, shapes)
      if r:
        k = kinds.setdefault(r[0], dict(category=r[1], count=0, flops=0, valid_flops=0))
        k["count"] += mult
        k["flops"] += mult * r[2]
        k["valid_flops"] += mult * r[3]
        check["flops"] += r[3]  # cost-analysis style: loop bodies once
      elif not scalar and ins[2] in _ELEMENTWISE | _TRANSCENDENTAL | {"reduce"}:
        d = _dims(ins[1] if ins[2] != "reduce" else shapes.get(ins[3][0].split()[-1].lstrip("%"), ""))
        check["transcendentals" if ins[2] in _TRANSCENDENTAL else "flops"] += math.prod(d or [0])
      trip = 1
      if ins[2] == "while":
        m = _TRIP.search(ins[4])
        trip = int(m.group(1)) if m else 1
        loops.append(trip if m else None)
      for key, val in _CALLS.findall(ins[4]):
        for callee in re.findall(r"[\w.\-]+", val):
          if callee in comps and depth < 64:  # reducers etc. (to_apply) run per element: not counted
            visit(callee, mult * (trip if key == "body" else 1), scalar or key == "to_apply", depth + 1)

  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  visit(entry, 1, False)
  cat = {c: sum(k["flops"] for k in kinds.values() if k["category"] == c) for c in ("conv", "dot", "attention")}
  total = sum(cat.values())
  return dict(
    total=total,
    valid_total=sum(k["valid_flops"] for k in kinds.values()),
    **cat,
    share={c: v / total if total else float("nan") for c, v in cat.items()},
    unparsed={k: v["count"] for k, v in kinds.items() if v["category"] == "unparsed"},
    loops=loops,
    kinds=kinds,
    check=check,
  )


def cost_analysis(compiled) -> dict:
  """flops / bytes accessed; a dict in new jax, a list of per-computation dicts in old jax."""
  ca = compiled.cost_analysis()
  ca = ca if isinstance(ca, (list, tuple)) else [ca]

  def get(key):
    vals = [float(d[key]) for d in ca if d and key in d]
    return sum(vals) if vals else float("nan")

  return dict(flops=get("flops"), bytes=get("bytes accessed"), transcendentals=get("transcendentals"))


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def _time_sync(call, reps, warmup):
  """Median ms of `reps` calls (call(i) -> arrays), each synchronised, after `warmup` calls."""
  import jax

  for i in range(warmup):
    jax.block_until_ready(call(i))
  times = []
  for i in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(call(warmup + i))
    times.append(time.perf_counter() - t0)
  return _median_ms(times)


def _time_async(fn, args, reps, inner=10):
  """Median over `reps` of the mean ms of `inner` back-to-back dispatches: sub-millisecond
  kernels would otherwise be timed with the host's dispatch and sync latency. (Waiting for the
  last output waits for all: one device stream runs them in order.)"""
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(max(reps, 3)):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / inner)
  return _median_ms(times)


def measure(name, batch, jitted, lower_args, call, args, res):
  """Compile once, count FLOPs two ways, time; append a row to res["rows"]. A failure is
  logged and skipped so that the other measurements of a long GPU run still come back."""
  try:
    log(f"{name}: compiling")
    t0 = time.perf_counter()
    compiled = jitted.lower(*lower_args[0], **lower_args[1]).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    if args.dump_hlo:
      os.makedirs(args.dump_hlo, exist_ok=True)
      with open(os.path.join(args.dump_hlo, re.sub(r"\W+", "_", name).strip("_") + ".hlo.txt"), "w") as f:
        f.write(text)
    ca, hlo = cost_analysis(compiled), hlo_flops(text)
    log(f"{name}: compiled in {compile_s:.1f} s; timing")
    ms = _time_sync(lambda i: call(compiled, i), args.reps, args.warmup)
  except Exception as e:  # noqa: BLE001
    log(f"{name} failed: {type(e).__name__}: {str(e)[:2000]}")
    return None
  row = dict(
    name=name,
    batch=batch,
    ms=ms,
    compile_s=compile_s,
    cost_flops=ca["flops"],
    cost_bytes=ca["bytes"],
    cost_transcendentals=ca["transcendentals"],
    hlo=hlo,
    cost_tflops=ca["flops"] / ms / 1e9,
    hlo_tflops=hlo["total"] / ms / 1e9,
  )
  res["rows"].append(row)
  log(
    f"{name}: {ms:.2f} ms; GFLOP: cost analysis {ca['flops'] / 1e9:.4f}, HLO conv+dot+attn {hlo['total'] / 1e9:.4f}"
    f" (valid taps {hlo['valid_total'] / 1e9:.4f}); check: HLO valid taps + elementwise, loop bodies once "
    f"{hlo['check']['flops'] / 1e9:.4f} vs cost analysis {ca['flops'] / 1e9:.4f}, transcendentals "
    f"{hlo['check']['transcendentals']:.0f} vs {ca['transcendentals']:.0f}; unparsed {hlo['unparsed'] or 'none'}"
  )
  return row


def run_models(args, res, unet_cfg, vae_cfg):
  import jax
  import jax.numpy as jnp

  ip = random_ip2p(unet_cfg, vae_cfg, args.size, "bfloat16", args.attention, args.steps)
  log("model ready")
  key = jax.random.PRNGKey(0)
  lat, b, n = args.size // ip.model.downsample, args.batch, args.images
  res["latent"] = lat
  x = jax.random.normal(key, (b, 8, lat, lat), jnp.bfloat16)
  emb = jax.random.normal(key, (b, 77, unet_cfg["cross_attention_dim"]), jnp.bfloat16)
  pu = ip.params["unet"]
  measure(
    f"UNet forward ({lat}x{lat} latents)",
    b,
    unet_step_fn(ip, args.attention),
    ((pu, x, emb), {}),
    lambda c, i: c(pu, x, emb),
    args,
    res,
  )

  pv = ip.params["vae"]
  imgs = jax.random.uniform(key, (2 * n, args.size, args.size, 3))
  measure(
    f"VAE encode ({args.size}x{args.size})",
    2 * n,
    jax.jit(ip._encode),
    ((pv, imgs), {}),
    lambda c, i: c(pv, imgs),
    args,
    res,
  )
  z = jax.random.normal(key, (n, ip.model.latent_channels, lat, lat))
  measure(
    f"VAE decode ({args.size}x{args.size})", n, jax.jit(ip._decode), ((pv, z), {}), lambda c, i: c(pv, z), args, res
  )

  renders, originals = (jax.random.uniform(jax.random.fold_in(key, k), (n, args.size, args.size, 3)) for k in (2, 3))
  pe = jax.random.normal(key, (3, 77, unet_cfg["cross_attention_dim"]), jnp.float32)
  # ip.edit (bench_ours' path) reuses this compilation through jit's caches; a new key every call
  measure(
    f"edit call ({args.steps} DDIM steps, 3-way guidance)",
    n,
    ip.edit_fn,
    ((ip.params, renders, originals, pe, key, None, None, None), dict(output="square")),
    lambda c, i: ip.edit(renders, originals, pe, jax.random.PRNGKey(i)),
    args,
    res,
  )


def run_micro(args, res, unet_cfg, lat):
  import jax
  import jax.numpy as jnp

  key = jax.random.PRNGKey(1)
  bf = jnp.bfloat16
  rows = res["micro"]
  if args.micro_size:
    n = args.micro_size
    a, b = jax.random.normal(key, (n, n), bf), jax.random.normal(key, (n, n), bf) / n**0.5
    ms = _time_async(jax.jit(jnp.matmul), (a, b), args.reps)
    rows.append(dict(name=f"matmul {n}x{n}x{n} bf16", kind="matmul", flops=2 * n**3, ms=ms))
    del a, b
  conv = jax.jit(
    lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  )
  for k, c in enumerate(unet_cfg["block_out_channels"][:2]):  # the resolutions with the most convs
    hw = lat // 2**k
    x = jax.random.normal(key, (args.batch, hw, hw, c), bf)
    w = jax.random.normal(key, (3, 3, c, c), bf) / (9 * c) ** 0.5
    ms = _time_async(conv, (x, w), args.reps)
    rows.append(
      dict(
        name=f"conv 3x3 {args.batch}x{hw}x{hw}x{c} -> {c} bf16",
        kind="conv",
        flops=2 * args.batch * hw * hw * c * 9 * c,
        ms=ms,
      )
    )
  nbytes = args.copy_mib * 2**20
  x = jnp.zeros((nbytes // 4,), jnp.float32)
  ms = _time_async(jax.jit(lambda x: x + 1), (x,), args.reps)  # a real kernel: reads and writes once
  rows.append(dict(name=f"copy {args.copy_mib} MiB (x + 1, f32)", kind="copy", bytes=2 * nbytes, ms=ms))
  for r in rows:
    r["tflops"] = r["flops"] / r["ms"] / 1e9 if "flops" in r else None
    r["gbps"] = r["bytes"] / r["ms"] / 1e6 if "bytes" in r else None
    log(f"{r['name']}: {r['ms']:.3f} ms, " + (f"{r['tflops']:.1f} TFLOP/s" if r["tflops"] else f"{r['gbps']:.0f} GB/s"))


def limit(args, res):
  """FLOPs a full edit needs vs the time the target allows, against the measured ceilings."""
  rows = {r["name"].split(" (")[0]: r for r in res["rows"]}
  unet, enc, dec = rows.get("UNet forward"), rows.get("VAE encode"), rows.get("VAE decode")
  if not (unet and enc and dec):
    return None
  scale = 3 * args.images / unet["batch"]  # UNet cost is linear in its batch
  per_edit = lambda key: args.steps * scale * key(unet) + key(enc) + key(dec)
  target_ms = args.target_ratio * args.torch_ms
  lim = dict(
    target_ms=target_ms,
    unet_batch_scale=scale,
    flops_cost=per_edit(lambda r: r["cost_flops"]),
    flops_hlo=per_edit(lambda r: r["hlo"]["total"]),
    bytes_cost=per_edit(lambda r: r["cost_bytes"]),
    parts_ms=per_edit(lambda r: r["ms"]),
  )
  lim["required_tflops_cost"] = lim["flops_cost"] / target_ms / 1e9
  lim["required_tflops_hlo"] = lim["flops_hlo"] / target_ms / 1e9
  edit = rows.get("edit call")
  lim["edit_ms"] = edit["ms"] if edit else float("nan")
  # the compiled edit itself: XLA hoists loop-invariant work (the prompt's cross-attention K/V)
  lim["flops_hlo_edit"] = edit["hlo"]["total"] if edit else float("nan")
  lim["required_tflops_hlo_edit"] = lim["flops_hlo_edit"] / target_ms / 1e9
  lim["ceilings"] = [
    dict(
      name=m["name"],
      tflops=m["tflops"],
      floor_ms=lim["flops_hlo"] / m["tflops"] / 1e9,
      required_share=lim["required_tflops_hlo"] / m["tflops"],
    )
    for m in res["micro"]
    if m["tflops"]
  ]
  bw = [m["gbps"] for m in res["micro"] if m["gbps"]]
  lim["memory_floor_ms"] = lim["bytes_cost"] / bw[0] / 1e6 if bw else float("nan")
  return lim


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _print_models(res):
  print()
  print(
    "| workload | batch | XLA cost-analysis GFLOP | HLO conv+dot+attn GFLOP | bytes accessed GB | median ms "
    "| TFLOP/s (cost analysis) | TFLOP/s (HLO count) |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for r in res["rows"]:
    print(
      f"| {r['name']} | {r['batch']} | {r['cost_flops'] / 1e9:.2f} | {r['hlo']['total'] / 1e9:.2f} | "
      f"{r['cost_bytes'] / 1e9:.3f} | {r['ms']:.2f} | {r['cost_tflops']:.2f} | {r['hlo_tflops']:.2f} |"
    )
  print(
    "\nXLA's cost analysis counts a while-loop body once and includes elementwise work; the HLO count is "
    "matmul-class work only, every conv tap (padding included), loop bodies times their known trip count."
  )
  print("\nFLOP breakdown (optimized HLO, executions counted with loop trips):\n")
  print(
    "| workload | conv GFLOP (share) | dot GFLOP (share) | attention GFLOP (share) | unparsed ops | "
    "loops (trip counts) | check: HLO valid taps + elementwise (loops once) vs cost analysis GFLOP |"
  )
  print("|---|---|---|---|---|---|---|")
  for r in res["rows"]:
    h = r["hlo"]
    cell = lambda c: f"{h[c] / 1e9:.2f} ({100 * h['share'][c]:.1f}%)"
    unp = ", ".join(f"{k} x{v}" for k, v in h["unparsed"].items()) or "none"
    print(
      f"| {r['name']} | {cell('conv')} | {cell('dot')} | {cell('attention')} | {unp} | "
      f"{h['loops'] or '-'} | {h['check']['flops'] / 1e9:.4f} vs {r['cost_flops'] / 1e9:.4f} |"
    )
  print("\nBy op kind:\n")
  print("| workload | op kind | category | executions | GFLOP |")
  print("|---|---|---|---|---|")
  for r in res["rows"]:
    for k, v in sorted(r["hlo"]["kinds"].items(), key=lambda kv: -kv[1]["flops"]):
      print(f"| {r['name']} | {k} | {v['category']} | {v['count']} | {v['flops'] / 1e9:.3f} |")


def print_report(res):
  print("\n" + res["header"])
  if res["rows"]:
    _print_models(res)
  if res["micro"]:
    print("\nHardware ceilings (bf16, same device):\n")
    print("| microbenchmark | ms | TFLOP/s | GB/s |")
    print("|---|---|---|---|")
    for m in res["micro"]:
      tf, gb = m["tflops"], m["gbps"]
      print(f"| {m['name']} | {m['ms']:.3f} | {f'{tf:.1f}' if tf else '-'} | {f'{gb:.0f}' if gb else '-'} |")
  lim = res.get("limit")
  if lim:
    a = res["args"]
    print(
      f"\nLimit: target = {a['target_ratio']} x {a['torch_ms']} ms = {lim['target_ms']:.1f} ms per edit of "
      f"{a['images']} images ({a['steps']} UNet steps at batch {3 * a['images']} + VAE encode "
      f"{2 * a['images']} + decode {a['images']}; UNet FLOPs scaled x{lim['unet_batch_scale']:.2f} from the "
      f"measured batch):\n"
    )
    print("| quantity | value |")
    print("|---|---|")
    print(f"| FLOPs per edit, XLA cost analysis | {lim['flops_cost'] / 1e12:.2f} TFLOP |")
    print(f"| FLOPs per edit, HLO conv+dot+attn (dense) | {lim['flops_hlo'] / 1e12:.2f} TFLOP |")
    print(f"| FLOPs of the compiled edit call, HLO count | {lim['flops_hlo_edit'] / 1e12:.2f} TFLOP |")
    print(
      f"| required TFLOP/s (cost analysis / HLO count / compiled edit) | {lim['required_tflops_cost']:.1f} / "
      f"{lim['required_tflops_hlo']:.1f} / {lim['required_tflops_hlo_edit']:.1f} |"
    )
    for c in lim["ceilings"]:
      print(
        f"| {c['name']}: {c['tflops']:.1f} TFLOP/s | target needs {100 * c['required_share']:.0f}% of it; "
        f"all HLO FLOPs at this rate take {c['floor_ms']:.1f} ms |"
      )
    print(f"| memory floor: bytes accessed / copy bandwidth | {lim['memory_floor_ms']:.1f} ms |")
    print(f"| measured parts: {a['steps']} x UNet + encode + decode | {lim['parts_ms']:.1f} ms |")
    print(
      f"| measured edit call | {lim['edit_ms']:.1f} ms ({lim['edit_ms'] / lim['target_ms']:.2f} x target; "
      f"{lim['flops_hlo_edit'] / lim['edit_ms'] / 1e9:.1f} TFLOP/s by its HLO count) |"
    )


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--images", type=int, default=4, help="images per edit call")
  ap.add_argument("--batch", type=int, default=None, help="UNet batch for the forward (default 3 x images)")
  ap.add_argument("--size", type=int, default=None, help="image size (default 512; 64 with --tiny)")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument(
    "--attention",
    default="cudnn",
    choices=("cudnn", "xla"),
    help="UNet self-attention (cudnn falls back to xla where unsupported, e.g. CPU)",
  )
  ap.add_argument("--torch-ms", type=float, default=1012.8, help="PyTorch fp16 edit time (ms) for --images")
  ap.add_argument("--target-ratio", type=float, default=0.4)
  ap.add_argument(
    "--micro-size",
    type=int,
    default=None,
    help="matmul microbenchmark N (N x N x N); 0 skips it (default 8192; 1024 on CPU)",
  )
  ap.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth array size (default 1024; 64 on CPU)")
  ap.add_argument("--no-models", action="store_true", help="microbenchmarks only")
  ap.add_argument("--tiny", action="store_true", help="the tiny test architecture (CPU smoke test)")
  ap.add_argument("--out", default=None, help="write the results as JSON here (after every section)")
  ap.add_argument("--dump-hlo", default=None, help="also write each compiled module's optimized HLO text here")
  ap.add_argument("--table", default=None, help="re-print the report of a saved JSON and exit")
  args = ap.parse_args()
  if args.table:
    with open(args.table) as f:
      return print_report(json.load(f))
  import jax

  cpu = jax.default_backend() == "cpu"
  args.batch = args.batch or 3 * args.images
  args.size = args.size or (64 if args.tiny else 512)
  args.micro_size = (1024 if cpu else 8192) if args.micro_size is None else args.micro_size
  args.copy_mib = args.copy_mib or (64 if cpu else 1024)
  if args.tiny:
    from gaedit_jax.nets.tiny import TINY_UNET, TINY_VAE

    unet_cfg, vae_cfg = dict(TINY_UNET), dict(TINY_VAE)
  else:
    unet_cfg, vae_cfg = SD15_UNET, SD15_VAE
  dev = jax.devices()[0]
  res = dict(
    header=f"InstructPix2Pix roofline, {'tiny' if args.tiny else 'SD 1.5'} architecture, bf16, "
    f"{args.size}x{args.size}, attention={args.attention}; {dev.device_kind}; jax {jax.__version__}; "
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.node()}",
    args=vars(args),
    rows=[],
    micro=[],
  )
  print(res["header"], flush=True)

  def save():
    if args.out:
      with open(args.out, "w") as f:
        json.dump(res, f, indent=1)

  down = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
  if not args.no_models:
    run_models(args, res, unet_cfg, vae_cfg)
    save()
  run_micro(args, res, unet_cfg, args.size // down)
  res["limit"] = limit(args, res)
  save()
  print_report(res)


if __name__ == "__main__":
  main()
