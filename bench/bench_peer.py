#!/usr/bin/python3
"""quantkit vs llama.cpp's llama-bench on the same synthetic ~1B Llama, same threads.

Run by `make bench-peer` (scripts/bench-peer.sh builds llama-bench first). For each format:
`quantkit synth` makes the model once (cached in --models), then

  llama-bench -m F -p P -n 0 -t T -r R -o json         prompt processing (pp), empty cache
  llama-bench -m F -p 0 -n G -d P -t T -r R -o json    generation (tg) after a P-token prompt
  quantkit bench --model F --threads T --prompt P --gen G --reps R --json

and prints one table: format, GB of weights read per token, pp and tg tokens/s of both with
the quantkit / llama.cpp ratio, and the % of the machine's memory bandwidth (measured by
quantkit bench in the same run) each reaches in generation. Both sides report the median of
their repetitions. Generation is measured after the prompt on both sides (quantkit bench's
convention; llama-bench's default tg starts from an empty cache, hence -d P).
Differences that remain: llama.cpp's KV cache is F16 (quantkit's F32 unless --kv), and
llama.cpp may run flash attention (its default, auto).

The synthetic weights are random: these numbers are for speed, never for quality.
Standard library only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_json(cmd):
    """Runs cmd, returns its stdout parsed as JSON; on failure prints its stderr and exits."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("bench_peer: %s failed (exit %d):\n%s" % (" ".join(cmd), p.returncode, p.stderr[-4000:]))
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        sys.exit("bench_peer: %s: output is not JSON (%s):\n%s" % (cmd[0], e, p.stdout[:2000]))


def synth_model(args, fmt):
    """The cached synthetic model in fmt; made by `quantkit synth` when missing."""
    os.makedirs(args.models, exist_ok=True)
    path = os.path.join(args.models, "synth-llama-1b-seed%d-%s.gguf" % (args.seed, fmt.replace(":", "_")))
    if not os.path.exists(path):
        log("bench_peer: %s: quantkit synth --format %s ..." % (path, fmt))
        info = run_json([args.quantkit, "synth", "--format", fmt, "--seed", str(args.seed), "-o", path, "--json"])
        log("bench_peer: wrote %.2f GB in %.1f s" % (info["bytes"] / 1e9, info["seconds"]))
    return path


def llama_bench_tps(args, model, prompt, gen, depth):
    """Median tokens/s of llama-bench's one test (prompt-only or generation-only)."""
    cmd = [args.llama_bench, "-m", model, "-p", str(prompt), "-n", str(gen), "-d", str(depth),
           "-t", str(args.threads), "-r", str(args.reps), "-o", "json"]
    tests = run_json(cmd)
    if len(tests) != 1:
        sys.exit("bench_peer: llama-bench returned %d tests, expected 1" % len(tests))
    return statistics.median(tests[0]["samples_ts"]), tests[0]


def measure(args, fmt):
    model = synth_model(args, fmt)
    log("bench_peer: %s: llama-bench pp%d ..." % (fmt, args.prompt))
    pp_l, info = llama_bench_tps(args, model, args.prompt, 0, 0)
    log("bench_peer: %s: llama-bench tg%d @ %d ..." % (fmt, args.gen, args.prompt))
    tg_l, _ = llama_bench_tps(args, model, 0, args.gen, args.prompt)
    log("bench_peer: %s: quantkit bench ..." % fmt)
    qk = run_json([args.quantkit, "bench", "--model", model, "--threads", str(args.threads),
                   "--prompt", str(args.prompt), "--gen", str(args.gen), "--reps", str(args.reps), "--json"])
    best = qk["machine_bandwidth"]["best_gbs"]
    # The same bytes per token for both: every weight matrix once (llama.cpp's F16 KV cache
    # is smaller than quantkit's F32 one, so this slightly favours neither).
    weights = qk["weight_bytes"]
    row = {
        "format": fmt, "model": model, "weight_gb": weights / 1e9, "llama_cpp_model_bytes": info.get("model_size"),
        "pp": {"quantkit": qk["pp"]["tokens_per_second"], "llama_cpp": pp_l},
        "tg": {"quantkit": qk["tg"]["tokens_per_second"], "llama_cpp": tg_l},
        "bandwidth_gbs": best, "bandwidth_kernel": qk["machine_bandwidth"]["best_kernel"],
        "bandwidth_pct": {"quantkit": 100 * weights * qk["tg"]["tokens_per_second"] / 1e9 / best,
                          "llama_cpp": 100 * weights * tg_l / 1e9 / best},
    }
    for k in ("pp", "tg"):
        row[k]["ratio"] = row[k]["quantkit"] / row[k]["llama_cpp"] if row[k]["llama_cpp"] else 0.0
    return row


def print_table(args, rows):
    print("synthetic Llama ~1B (random weights: speed only), %d threads, pp%d, tg%d after the prompt, "
          "median of %d" % (args.threads, args.prompt, args.gen, args.reps))
    head = ("format", "GB w", "pp qk", "pp llama", "ratio", "tg qk", "tg llama", "ratio", "%bw qk", "%bw llama")
    print("%-10s %6s %9s %9s %6s %8s %8s %6s %7s %9s" % head)
    for r in rows:
        print("%-10s %6.3f %9.2f %9.2f %6.2f %8.2f %8.2f %6.2f %6.1f%% %8.1f%%" % (
            r["format"], r["weight_gb"], r["pp"]["quantkit"], r["pp"]["llama_cpp"], r["pp"]["ratio"],
            r["tg"]["quantkit"], r["tg"]["llama_cpp"], r["tg"]["ratio"],
            r["bandwidth_pct"]["quantkit"], r["bandwidth_pct"]["llama_cpp"]))
    bw = ", ".join("%.1f GB/s (%s)" % (r["bandwidth_gbs"], r["bandwidth_kernel"]) for r in rows)
    print("machine bandwidth (STREAM-like, measured by each quantkit bench run): %s" % bw)
    print("GB w = weights read per generated token; ratio = quantkit / llama.cpp tokens/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quantkit", required=True, help="the quantkit binary")
    ap.add_argument("--llama-bench", required=True, help="llama.cpp's llama-bench binary")
    ap.add_argument("--models", required=True, help="folder caching the synthetic models")
    ap.add_argument("--formats", default="q4_0,q8_0,q4_k", help="comma-separated formats (default: q4_0,q8_0,q4_k)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = [measure(args, f) for f in args.formats.split(",") if f]
    load_after = os.getloadavg()[0]
    print_table(args, rows)
    # Other processes on the cores distort both tools (llama.cpp's spinning threads most); the
    # load after includes the benchmarks' own threads.
    busy = load_before > os.cpu_count() - args.threads + 0.5
    print("load average (1 min) before / after: %.2f / %.2f on %d CPUs%s" % (
        load_before, load_after, os.cpu_count(), "  -- busy machine: numbers are noisy" if busy else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "prompt": args.prompt, "gen": args.gen, "reps": args.reps,
                       "load_average": [load_before, load_after], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
