#!/usr/bin/env python3
"""attend side by side with its peers on the benchmark suite's dense shapes, in one run.

Systems, all at the same thread count (2 by default) on the same machine:
  attend f32 / attend bf16 KV   attend_bench rows dense/<shape>/{f32,bf16}
  Eigen naive f32               attend_bench rows baseline.eigen/<shape>/f32 (P1, P2, D1, D2)
  PyTorch SDPA f32              torch.nn.functional.scaled_dot_product_attention, CPU flash kernel
  PyTorch math f32              explicit softmax(Q Kᵀ * scale) V with torch matmuls

Counters follow ../../../shared/BENCHMARKS.md: GFLOP/s = 4 B Hq Lq Lk D / time (halved for causal
prefill), GB/s = bytes of K and V read / time (decode), percentages of the FMA peak and read
bandwidth attend_bench measures at start-up in the same run. Every time is a median.

Usually started by run.sh (which makes the venv and builds attend_bench):
  bench/compare/run.sh [--with-p3] [--update-docs] [--shapes P1,D2] [--reps 5]
Writes bench/compare/results/compare.{md,png,json}; --update-docs also copies the table and
plot to docs/. `compare.py --self-test` checks the counters, parsing and table with the standard
library only (CI runs it).
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "bench", "compare", "results")
DEFAULT_BENCH = os.path.join(REPO, "build", "bench", "bench", "attend_bench")

# The suite's dense shapes (BENCHMARKS.md): batch, heads_q, heads_kv, dim, seq_q, seq_k, causal.
SHAPES = {
    "P1": (1, 32, 8, 128, 2048, 2048, True),
    "P2": (1, 12, 12, 64, 512, 512, False),
    "P3": (1, 32, 8, 128, 8192, 8192, True),
    "D1": (1, 32, 8, 128, 1, 4096, False),
    "D2": (1, 32, 8, 128, 1, 32768, False),
    "D3": (1, 32, 8, 128, 1, 131072, False),
}
DEFAULT_SHAPES = ["P1", "P2", "D1", "D2", "D3"]

# System label -> attend_bench row pattern ({} = shape), in table and plot order.
ATTEND_SYSTEMS = [
    ("attend f32", "dense/{}/f32"),
    ("attend bf16 KV", "dense/{}/bf16"),
    ("Eigen naive f32", "baseline.eigen/{}/f32"),
]
SDPA = "PyTorch SDPA f32"
MATH = "PyTorch math f32"
SYSTEMS = [name for name, _ in ATTEND_SYSTEMS] + [SDPA, MATH]


def is_decode(shape):
    return SHAPES[shape][4] <= 16


def flops(shape):
    """4 * B * Hq * Lq * Lk * D, halved for causal prefill."""
    b, hq, _, d, lq, lk, causal = SHAPES[shape]
    f = 4.0 * b * hq * lq * lk * d
    return f / 2 if causal and lq > 1 else f


def kv_bytes(shape, elem_bytes):
    """Bytes of K and V read by one pass over the cache."""
    b, _, hkv, d, _, lk, _ = SHAPES[shape]
    return 2.0 * b * lk * hkv * d * elem_bytes


def bench_filter(shapes):
    """Regex selecting the attend_bench rows of the comparison."""
    alt = "|".join(shapes)
    # Google Benchmark appends "/real_time" to the names of rows timed in real time.
    return "^(dense/({})/(f32|bf16)|baseline\\.eigen/({})/f32)(/real_time)?$".format(alt, alt)


def leading_float(text):
    m = re.match(r"\s*([0-9.eE+-]+)", str(text))
    return float(m.group(1)) if m else float("nan")


def parse_attend_json(doc, shapes):
    """attend_bench's JSON -> (machine dict, {(shape, system): seconds})."""
    ctx = doc.get("context", {})
    machine = {
        "cpu": ctx.get("cpu", "unknown"),
        "isa": ctx.get("isa", "?"),
        "threads": int(leading_float(ctx.get("threads", "0")) or 0),
        "peak_gflops": leading_float(ctx.get("fma_peak", "nan")),
        "read_gbps": leading_float(ctx.get("read_bandwidth", "nan")),
        "xsimd": ctx.get("xsimd", "?"),
        "eigen": ctx.get("eigen", "?"),
    }
    times = {}
    for row in doc.get("benchmarks", []):
        if row.get("error_occurred"):
            continue
        name = re.sub("/real_time$", "", row.get("run_name", row.get("name", "")))
        for shape in shapes:
            for system, pattern in ATTEND_SYSTEMS:
                if name == pattern.format(shape) and "ms" in row:
                    times[(shape, system)] = float(row["ms"]) / 1e3
    return machine, times


def make_rows(shapes, times, machine):
    """One result per (shape, system) measured: ms, GFLOP/s, GB/s, % peak, % bw, x SDPA."""
    rows = []
    for shape in shapes:
        ref = times.get((shape, SDPA))
        for system in SYSTEMS:
            t = times.get((shape, system))
            if t is None or not t > 0:
                continue
            elem = 2 if "bf16" in system else 4
            gflops = flops(shape) / t / 1e9
            gbps = kv_bytes(shape, elem) / t / 1e9 if is_decode(shape) else None
            rows.append({
                "shape": shape,
                "system": system,
                "ms": t * 1e3,
                "gflops": gflops,
                "gbps": gbps,
                "pct_peak": 100.0 * gflops / machine["peak_gflops"],
                "pct_bw": 100.0 * gbps / machine["read_gbps"] if gbps is not None else None,
                "vs_sdpa": ref / t if ref else None,
            })
    return rows


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 100:
        return "{:.0f}".format(x)
    return "{:.{}g}".format(x, digits)


def markdown(rows, machine, meta):
    """The results table with date, machine and method."""
    out = []
    out.append("# attend and its peers on the suite's dense shapes\n")
    out.append("Measured {date} on {cpu}, {threads} threads ({isa} build of attend_bench); "
               "attend {commit}, PyTorch {torch} ({sdpa_backend} SDPA backend), Eigen {eigen}. "
               "The machine's fp32 FMA peak ({peak} GFLOP/s) and read bandwidth ({bw} GB/s) are "
               "measured by attend_bench at start-up in the same run.\n".format(
                   peak=fmt(machine["peak_gflops"]), bw=fmt(machine["read_gbps"]),
                   cpu=machine["cpu"], isa=machine["isa"], eigen=machine["eigen"], **meta))
    if meta.get("busy"):
        out.append("**The machine was busy: other processes used {others} of its CPU time "
                   "during the run, so every row is slower than on an idle machine, the peak "
                   "and bandwidth figures too. Re-run on an idle machine for representative "
                   "numbers.**\n".format(**meta))
    out.append("| shape | system | median ms | GFLOP/s | GB/s (K+V) | % of FMA peak | "
               "% of read bw | × PyTorch SDPA |")
    out.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        decode = is_decode(r["shape"])
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["shape"], r["system"], fmt(r["ms"]), fmt(r["gflops"]), fmt(r["gbps"]),
            "" if decode else fmt(r["pct_peak"]), fmt(r["pct_bw"]) if decode else "",
            "{:.2f}".format(r["vs_sdpa"]) if r["vs_sdpa"] else "–"))
    out.append("")
    out.append("Shapes (BENCHMARKS.md): P1 causal prefill 32/8 heads, D 128, 2048²; P2 encoder "
               "12/12 heads, D 64, 512²; P3 causal prefill 8192²; D1/D2/D3 decode of one token "
               "over 4K/32K/128K cached tokens, 32/8 heads, D 128. GFLOP/s counts "
               "4·B·Hq·Lq·Lk·D (halved for causal prefill); GB/s counts the bytes of K and V in "
               "their storage type (bf16 KV reads half the bytes of f32). Q and O are fp32 "
               "everywhere; PyTorch runs f32 K/V in [B, H, L, D] layout, attend [B, L, H, D]. "
               "attend and Eigen rows are attend_bench's medians; PyTorch rows are medians of "
               "{reps} timed calls after a warm-up. {gqa} {check} Other processes used {others} "
               "of the CPU time during the run; the rows of one shape are measured back to "
               "back.\n".format(**meta))
    out.append("![GFLOP/s and GB/s per shape and system](compare.png)\n")
    return "\n".join(out)


def plot(rows, machine, meta, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = [s for s in meta["shapes"] if not is_decode(s)]
    dec = [s for s in meta["shapes"] if is_decode(s)]
    panels = [(pre, "gflops", "GFLOP/s (prefill)", machine["peak_gflops"], "FMA peak"),
              (dec, "gbps", "GB/s of K+V (decode)", machine["read_gbps"], "read bandwidth")]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    colors = ["#1f77b4", "#6baed6", "#9467bd", "#d62728", "#ff9896"]
    width = 0.8 / len(SYSTEMS)
    value = {(r["shape"], r["system"]): r for r in rows}
    for ax, (shapes, key, label, ceiling, ceiling_name) in zip(axes[0], panels):
        for i, system in enumerate(SYSTEMS):
            xs, ys = [], []
            for j, shape in enumerate(shapes):
                r = value.get((shape, system))
                if r and r[key] is not None:
                    xs.append(j + (i - (len(SYSTEMS) - 1) / 2) * width)
                    ys.append(r[key])
            bars = ax.bar(xs, ys, width, label=system, color=colors[i % len(colors)])
            for bar, y in zip(bars, ys):
                ax.annotate(fmt(y, 2), (bar.get_x() + bar.get_width() / 2, y), ha="center",
                            va="bottom", fontsize=6, rotation=90, xytext=(0, 2),
                            textcoords="offset points")
        if ceiling and not math.isnan(ceiling):
            ax.axhline(ceiling, color="gray", linestyle="--", linewidth=1)
            ax.text(len(shapes) - 0.5, ceiling, " {} {}".format(ceiling_name, fmt(ceiling)),
                    ha="right", va="bottom", fontsize=8, color="gray")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes)
        ax.set_ylabel(label)
        ax.set_ylim(0, max([ceiling if ceiling and not math.isnan(ceiling) else 0] +
                           [r[key] for r in rows if r["shape"] in shapes and r[key]]) * 1.18)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("attend vs peers, {} threads, {} ({}){}".format(
        machine["threads"], machine["cpu"], meta["date"],
        "\nbusy machine: other processes used {} of the CPU time".format(meta["others"])
        if meta.get("busy") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- measurements ------------------------------------------------------------------------------

def run_attend_bench(binary, shapes, threads):
    if not os.access(binary, os.X_OK):
        sys.exit("compare.py: {} not found; build it with `cmake --preset bench && cmake --build "
                 "--preset bench --target attend_bench` or pass --bench-bin".format(binary))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [binary, "--benchmark_filter=" + bench_filter(shapes), "--benchmark_format=json"]
    print("compare: running", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True)
    text = proc.stdout.decode()
    return json.loads(text[text.index("{"):])


def median_time(fn, reps):
    """Median seconds of `reps` calls (the caller has warmed fn up)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and sum(times) > 60:  # P3's math path: three calls are enough
            break
    return statistics.median(times)


def run_torch(shapes, threads, reps, seen):
    """Times PyTorch SDPA (flash CPU kernel forced where possible) and explicit math attention;
    adds what it used to `seen` (backends, GQA modes, SDPA-vs-math differences)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    times = {}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        flash = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # noqa: E731
    except ImportError:  # torch < 2.3
        flash = None
    backends = seen.setdefault("backends", set())
    gqa_mode = seen.setdefault("gqa", set())
    max_diff = seen.setdefault("max_diff", {})
    for shape in shapes:
        b, hq, hkv, d, lq, lk, causal = SHAPES[shape]
        g = hq // hkv
        q = torch.rand(b, hq, lq, d) * 2 - 1
        k = torch.rand(b, hkv, lk, d) * 2 - 1
        v = torch.rand(b, hkv, lk, d) * 2 - 1
        scale = 1.0 / math.sqrt(d)
        is_causal = causal and lq > 1

        # SDPA: GQA through enable_gqa (torch >= 2.5), else K/V repeated per query head
        # beforehand (outside the timed call).
        kwargs = {"is_causal": is_causal}
        kk, vv = k, v
        try:
            F.scaled_dot_product_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1],
                                           enable_gqa=True)
            kwargs["enable_gqa"] = True
            gqa_mode.add("enable_gqa")
        except TypeError:
            kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            gqa_mode.add("repeat_interleave")

        def sdpa_call():
            return F.scaled_dot_product_attention(q, kk, vv, **kwargs)

        sdpa = sdpa_call
        if flash is not None:
            try:  # probe on a slice of the problem: the same heads, dims and options
                with flash():
                    F.scaled_dot_product_attention(q[:, :, :16], kk[:, :, :64], vv[:, :, :64],
                                                   **kwargs)
                backends.add("flash")

                def sdpa():
                    with flash():
                        return sdpa_call()
            except RuntimeError:
                backends.add("default")
        else:
            backends.add("default")

        # Math: the query heads of a KV group fold into rows (no K/V copies); KV heads are
        # chunked so that the score matrix stays under ~1 GiB (P3).
        mask = None
        if is_causal:
            mask = torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1)
        chunk = max(1, min(hkv, (1 << 30) // (4 * g * lq * lk)))

        def math_call():
            o = torch.empty(b, hkv, g * lq, d)
            qf = q.view(b, hkv, g * lq, d)
            for h0 in range(0, hkv, chunk):
                h1 = min(hkv, h0 + chunk)
                s = torch.matmul(qf[:, h0:h1], k[:, h0:h1].transpose(-2, -1))
                s.mul_(scale)
                if mask is not None:
                    s.view(b, h1 - h0, g, lq, lk).masked_fill_(mask, float("-inf"))
                torch.matmul(torch.softmax(s, dim=-1), v[:, h0:h1], out=o[:, h0:h1])
            return o.view(b, hq, lq, d)

        with torch.no_grad():
            # The check doubles as the warm-up of both.
            max_diff[shape] = float((sdpa() - math_call()).abs().max())
            print("compare: PyTorch on {} (SDPA vs math max |diff| {:.2e})".format(
                shape, max_diff[shape]), flush=True)
            times[(shape, SDPA)] = median_time(sdpa, reps)
            times[(shape, MATH)] = median_time(math_call, reps)
        del q, k, v, kk, vv
    seen["torch"] = torch.__version__
    return times


def torch_notes(seen):
    """Notes for the table from what run_torch saw."""
    max_diff = seen.get("max_diff", {})
    return {
        "torch": seen.get("torch", "?"),
        "sdpa_backend": "/".join(sorted(seen.get("backends", ()))) or "?",
        "gqa": ("PyTorch SDPA gets GQA through {}.".format(" and ".join(sorted(seen["gqa"])))
                if seen.get("gqa") else ""),
        "check": ("PyTorch SDPA and math outputs agree within {:.1e} (max |diff|).".format(
            max(max_diff.values())) if max_diff else ""),
    }


def cpu_description(bench_cpu):
    """The CPU model string, with family/model and the widest vector ISA the host has."""
    fam = model = None
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "cpu family" and fam is None:
                    fam = val
                elif key == "model" and model is None:
                    model = val
                elif key == "flags" and not flags:
                    flags = val
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else ""
    extra = ", ".join(x for x in [
        "family {} model {}".format(fam, model) if fam else "", isa,
        "{} cores".format(os.cpu_count())] if x)
    return "{} ({})".format(bench_cpu, extra) if extra else bench_cpu


def cpu_usage():
    """(wall seconds, CPU seconds busy on the whole machine, CPU seconds of this process and its
    finished children), from /proc/stat and os.times()."""
    busy = float("nan")
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.time(), busy, t.user + t.system + t.children_user + t.children_system


def others_share(before, after):
    """Share of the machine's CPU time that other processes used between two cpu_usage()."""
    wall = after[0] - before[0]
    others = (after[1] - before[1]) - (after[2] - before[2])
    share = others / (wall * (os.cpu_count() or 1)) if wall > 0 else float("nan")
    if math.isnan(share):
        return {"others": "an unknown share", "busy": False}
    return {"others": "{:.0f} %".format(100 * max(0.0, share)), "busy": share > 0.1}


def git_commit():
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              check=True).stdout.decode().strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def write_outputs(rows, machine, meta, out_dir, update_docs):
    os.makedirs(out_dir, exist_ok=True)
    md = markdown(rows, machine, meta)
    md_path, png_path = os.path.join(out_dir, "compare.md"), os.path.join(out_dir, "compare.png")
    with open(md_path, "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump({"machine": machine, "meta": meta, "rows": rows}, f, indent=1)
    plot(rows, machine, meta, png_path)
    print(md)
    print("compare: wrote {} and {}".format(md_path, png_path))
    if update_docs:
        docs = os.path.join(REPO, "docs")
        os.makedirs(docs, exist_ok=True)
        shutil.copy(md_path, os.path.join(docs, "compare.md"))
        shutil.copy(png_path, os.path.join(docs, "compare.png"))
        print("compare: copied both to docs/")


# ---- self-test (standard library only) ---------------------------------------------------------

def self_test():
    passed = failed = 0

    def check(cond, what):
        nonlocal passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print("self-test FAILED:", what)

    check(flops("P1") == 4.0 * 32 * 2048 * 2048 * 128 / 2, "P1 flops halved for causal")
    check(flops("P2") == 4.0 * 12 * 512 * 512 * 64, "P2 flops not halved")
    check(flops("D2") == 4.0 * 32 * 32768 * 128, "decode flops")
    check(kv_bytes("D3", 4) == 2.0 * 131072 * 8 * 128 * 4, "D3 f32 K+V bytes")
    check(kv_bytes("D3", 2) * 2 == kv_bytes("D3", 4), "bf16 bytes are half")
    rx = re.compile(bench_filter(["P1", "D2"]))
    check(bool(rx.match("dense/P1/f32")) and bool(rx.match("dense/D2/bf16")), "filter selects")
    check(bool(rx.match("baseline.eigen/D2/f32")) and bool(rx.match("dense/P1/f32/real_time")),
          "filter selects the Eigen row and real-time names")
    check(not rx.match("dense/P2/f32") and not rx.match("dense/P1/f32/x") and
          not rx.match("baseline.eigen/P1/bf16"), "filter rejects other rows")

    doc = {"context": {"cpu": "Test CPU", "isa": "avx2", "threads": "2",
                       "fma_peak": "200.0 GFLOP/s", "read_bandwidth": "40.0 GB/s",
                       "eigen": "3.4.0"},
           "benchmarks": [
               {"name": "dense/P1/f32/real_time", "run_name": "dense/P1/f32/real_time",
                "ms": 343.6},
               {"name": "dense/D2/bf16", "run_name": "dense/D2/bf16", "ms": 2.0},
               {"name": "dense/D2/f32", "run_name": "dense/D2/f32", "error_occurred": True},
               {"name": "baseline.eigen/P1/f32", "run_name": "baseline.eigen/P1/f32",
                "ms": 687.2}]}
    machine, times = parse_attend_json(doc, ["P1", "D2"])
    check(machine["peak_gflops"] == 200.0 and machine["read_gbps"] == 40.0, "context figures")
    check(machine["threads"] == 2, "threads")
    check(set(times) == {("P1", "attend f32"), ("D2", "attend bf16 KV"),
                         ("P1", "Eigen naive f32")}, "rows parsed, errored row skipped")
    times[("P1", SDPA)] = 0.6872
    rows = make_rows(["P1", "D2"], times, machine)
    by = {(r["shape"], r["system"]): r for r in rows}
    p1 = by[("P1", "attend f32")]
    check(abs(p1["gflops"] - flops("P1") / 0.3436 / 1e9) < 1e-9, "GFLOP/s from ms")
    check(abs(p1["pct_peak"] - 100 * p1["gflops"] / 200.0) < 1e-9, "% of peak")
    check(abs(p1["vs_sdpa"] - 2.0) < 1e-9, "ratio to SDPA")
    check(p1["gbps"] is None, "no GB/s for prefill")
    d2 = by[("D2", "attend bf16 KV")]
    check(abs(d2["gbps"] - kv_bytes("D2", 2) / 0.002 / 1e9) < 1e-9, "bf16 GB/s from ms")
    check(abs(d2["pct_bw"] - 100 * d2["gbps"] / 40.0) < 1e-9, "% of bandwidth")
    meta = {"date": "2000-01-01", "threads": 2, "commit": "abc", "torch": "2.x",
            "sdpa_backend": "flash", "reps": 5, "gqa": "", "check": "", "shapes": ["P1", "D2"],
            "others": "0 %"}
    md = markdown(rows, machine, meta)
    check("| P1 | attend f32 | 344 | 100 | – | 50 |  | 2.00 |" in md, "P1 row in the table")
    check("| D2 | attend bf16 KV | 2 |" in md and "compare.png" in md, "D2 row and plot link")
    check(md.count("\n| ") == 1 + len(rows), "one table line per row")
    check("busy" not in md and "busy" in markdown(rows, machine, dict(meta, busy=True)),
          "busy-machine warning only when busy")
    t0 = (0.0, 100.0, 10.0)
    check(others_share(t0, (10.0, 110.0, 20.0))["busy"] is False, "idle machine")
    check(others_share(t0, (10.0, 120.0, 10.0)) ==
          {"others": "{:.0f} %".format(100 * 20 / (10 * (os.cpu_count() or 1))),
           "busy": 20 / (10 * (os.cpu_count() or 1)) > 0.1}, "share of other processes")
    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False
    if have_mpl:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "t.png")
            plot(rows, machine, meta, path)
            with open(path, "rb") as f:
                check(f.read(8) == b"\x89PNG\r\n\x1a\n", "plot is a PNG")
    print("compare.py self-test: {} passed, {} failed{}".format(
        passed, failed, "" if have_mpl else " (plot not checked: no matplotlib)"))
    return 0 if failed == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-p3", action="store_true", help="also run P3 (8192² prefill, slow)")
    ap.add_argument("--shapes", help="comma-separated subset of " + ",".join(SHAPES))
    ap.add_argument("--threads", type=int, default=2, help="threads for every system (2)")
    ap.add_argument("--reps", type=int, default=5, help="timed PyTorch calls per median (5)")
    ap.add_argument("--bench-bin", default=os.environ.get("ATTEND_BENCH_BIN", DEFAULT_BENCH),
                    help="attend_bench binary (default: the bench preset's)")
    ap.add_argument("--out", default=RESULTS, help="output directory (bench/compare/results)")
    ap.add_argument("--update-docs", action="store_true",
                    help="also copy compare.md and compare.png to docs/")
    ap.add_argument("--self-test", action="store_true", help="check this script; no benchmarks")
    ap.add_argument("--replot", metavar="JSON",
                    help="redraw the table and plot from a compare.json; no benchmarks")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        write_outputs(saved["rows"], saved["machine"], saved["meta"], args.out, args.update_docs)
        return 0

    shapes = args.shapes.split(",") if args.shapes else DEFAULT_SHAPES + (
        ["P3"] if args.with_p3 else [])
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error("unknown shape(s) {}".format(",".join(unknown)))
    shapes = sorted(set(shapes), key=list(SHAPES).index)

    start = time.time()
    usage = cpu_usage()
    # Shape by shape, attend_bench then PyTorch, so that the systems compared on one shape are
    # measured close together in time on a machine whose load may change. Each attend_bench
    # start measures the peak and bandwidth again; the best of those measurements is kept.
    machine, times, seen = None, {}, {}
    for shape in shapes:
        m, t = parse_attend_json(run_attend_bench(args.bench_bin, [shape], args.threads), [shape])
        if machine is None:
            machine = m
        else:
            for key in ("peak_gflops", "read_gbps"):
                machine[key] = max(machine[key], m[key])
        times.update(t)
        times.update(run_torch([shape], args.threads, args.reps, seen))
    machine["cpu"] = cpu_description(machine["cpu"])
    machine["threads"] = args.threads
    meta = dict(torch_notes(seen), date=datetime.date.today().isoformat(), threads=args.threads,
                commit=git_commit(), reps=args.reps, shapes=shapes,
                python=platform.python_version(),
                **others_share(usage, cpu_usage()))
    rows = make_rows(shapes, times, machine)
    write_outputs(rows, machine, meta, args.out, args.update_docs)
    print("compare: done in {:.0f} s".format(time.time() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
