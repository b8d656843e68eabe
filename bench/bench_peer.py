#!/usr/bin/python3
"""quantkit vs llama.cpp's llama-bench on the same synthetic ~1B Llama, same threads.

Run by `make bench-peer` (scripts/bench-peer.sh builds llama-bench first). For each format:
`quantkit synth` makes the model once (cached in --models), then

  llama-bench -m F -p P -n 0 -t T -r R -o json         prompt processing (pp), empty cache
  llama-bench -m F -p 0 -n G -d P -t T -r R -o json    generation (tg) after a P-token prompt
  quantkit bench --model F --threads T --prompt P --gen G --reps R --kv KV --json

and prints one table: format, GB of weights read per token, pp and tg tokens/s of both with
the quantkit / llama.cpp ratio, and the % of the machine's read bandwidth (measured by
quantkit bench in the same run) each reaches in generation. --rounds N repeats all runs N
times, interleaved, so both tools see a shared machine's changing load alike; each figure is
the best (default: the least disturbed) or the median of all repetitions of its tool.
Generation is measured after the prompt on both sides (quantkit bench's convention;
llama-bench's default tg starts from an empty cache, hence -d P).
Both keep the KV cache in F16 (llama-bench's default; quantkit's --kv, default f16 here).
A difference that remains: llama.cpp may run flash attention (its default, auto).

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


def llama_bench_samples(args, model, prompt, gen, depth):
    """tokens/s of each repetition of llama-bench's one test (prompt-only or generation-only)."""
    cmd = [args.llama_bench, "-m", model, "-p", str(prompt), "-n", str(gen), "-d", str(depth),
           "-t", str(args.threads), "-r", str(args.reps), "-o", "json"]
    tests = run_json(cmd)
    if len(tests) != 1:
        sys.exit("bench_peer: llama-bench returned %d tests, expected 1" % len(tests))
    return tests[0]["samples_ts"]


def llama_cpp_reads(fmt):
    """quantkit's own formats (spec strings such as int4:g128) are stored as quantkit tensors in
    the GGUF, which llama.cpp cannot run: those rows show quantkit alone."""
    return ":" not in fmt


def run_round(args, fmt, model, samples):
    """One round of the three runs on one model; appends their samples."""
    if llama_cpp_reads(fmt):
        log("bench_peer: %s: llama-bench pp%d ..." % (fmt, args.prompt))
        samples["pp"]["llama_cpp"] += llama_bench_samples(args, model, args.prompt, 0, 0)
        log("bench_peer: %s: llama-bench tg%d @ %d ..." % (fmt, args.gen, args.prompt))
        samples["tg"]["llama_cpp"] += llama_bench_samples(args, model, 0, args.gen, args.prompt)
    log("bench_peer: %s: quantkit bench ..." % fmt)
    qk = run_json([args.quantkit, "bench", "--model", model, "--threads", str(args.threads),
                   "--prompt", str(args.prompt), "--gen", str(args.gen), "--reps", str(args.reps), "--kv", args.kv,
                   "--json"])
    samples["pp"]["quantkit"] += qk["pp"]["samples"]
    samples["tg"]["quantkit"] += qk["tg"]["samples"]
    samples["machine"].append(qk["machine_bandwidth"])
    samples["weight_bytes"] = qk["weight_bytes"]


def summarize(args, fmt, model, samples, machine_gbs):
    stat = max if args.stat == "best" else statistics.median
    # The same bytes per generated token for both: every weight matrix once.
    weights = samples["weight_bytes"]
    row = {"format": fmt, "model": model, "weight_gb": weights / 1e9, "samples": samples}
    for k in ("pp", "tg"):
        row[k] = {tool: stat(samples[k][tool]) if samples[k][tool] else None for tool in ("quantkit", "llama_cpp")}
        row[k]["ratio"] = row[k]["quantkit"] / row[k]["llama_cpp"] if row[k]["llama_cpp"] else None
    row["bandwidth_pct"] = {tool: 100 * weights * row["tg"][tool] / 1e9 / machine_gbs if row["tg"][tool] else None
                            for tool in ("quantkit", "llama_cpp")}
    return row


def measure(args, formats):
    """Rounds over all formats, so that both tools see the machine's changing load alike."""
    models = {f: synth_model(args, f) for f in formats}
    samples = {f: {"pp": {"quantkit": [], "llama_cpp": []}, "tg": {"quantkit": [], "llama_cpp": []}, "machine": []}
               for f in formats}
    for r in range(args.rounds):
        for f in formats:
            if args.rounds > 1:
                log("bench_peer: round %d/%d" % (r + 1, args.rounds))
            run_round(args, f, models[f], samples[f])
    # The machine's read bandwidth: its best showing over every quantkit bench run (the least
    # disturbed).
    machine = max((m for f in formats for m in samples[f]["machine"]), key=lambda m: m["reference_gbs"])
    return [summarize(args, f, models[f], samples[f], machine["reference_gbs"]) for f in formats], machine


def print_table(args, rows, machine):
    print("synthetic Llama ~1B (random weights: speed only), %d threads, pp%d, tg%d after the prompt, KV cache %s; "
          "%s of %d repetitions per tool" % (args.threads, args.prompt, args.gen, args.kv,
                                              "best" if args.stat == "best" else "median", args.reps * args.rounds))
    head = ("format", "GB w", "pp qk", "pp llama", "ratio", "tg qk", "tg llama", "ratio", "%bw qk", "%bw llama")
    print("%-10s %6s %9s %9s %6s %8s %8s %6s %7s %9s" % head)
    def cell(v, width, fmt="%.2f"):
        return ("-" if v is None else fmt % v).rjust(width)
    for r in rows:
        print(" ".join(["%-10s" % r["format"], cell(r["weight_gb"], 6, "%.3f"),
                        cell(r["pp"]["quantkit"], 9), cell(r["pp"]["llama_cpp"], 9), cell(r["pp"]["ratio"], 6),
                        cell(r["tg"]["quantkit"], 8), cell(r["tg"]["llama_cpp"], 8), cell(r["tg"]["ratio"], 6),
                        cell(r["bandwidth_pct"]["quantkit"], 7, "%.1f%%"),
                        cell(r["bandwidth_pct"]["llama_cpp"], 9, "%.1f%%")]))
    print("machine: read %.1f GB/s (STREAM copy %.1f, triad %.1f; %d threads, best over the quantkit bench runs)"
          % (machine["read_gbs"], machine["copy_gbs"], machine["triad_gbs"], machine["threads"]))
    print("GB w = weights read per generated token; ratio = quantkit / llama.cpp tokens/s; "
          "%bw = GB w x tg tokens/s / read bandwidth")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quantkit", required=True, help="the quantkit binary")
    ap.add_argument("--llama-bench", required=True, help="llama.cpp's llama-bench binary")
    ap.add_argument("--models", required=True, help="folder caching the synthetic models")
    ap.add_argument("--formats", default="q4_0,q8_0,q4_k,int4:g128",
                    help="comma-separated formats (default: q4_0,q8_0,q4_k,int4:g128; quantkit specs with ':' "
                         "run in quantkit only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--kv", default="f16", help="quantkit's KV cache (llama-bench keeps F16 by default)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per run (llama-bench -r, quantkit bench --reps)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of every tool and format, interleaved")
    ap.add_argument("--stat", choices=("best", "median"), default="best",
                    help="per tool and test, over all repetitions: best (the least disturbed on a shared machine) "
                         "or median")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows, machine = measure(args, [f for f in args.formats.split(",") if f])
    load_after = os.getloadavg()[0]
    print_table(args, rows, machine)
    # Other processes on the cores distort both tools (llama.cpp's spinning threads most); the
    # load after includes the benchmarks' own threads.
    busy = load_before > os.cpu_count() - args.threads + 0.5
    print("load average (1 min) before / after: %.2f / %.2f on %d CPUs%s" % (
        load_before, load_after, os.cpu_count(), "  -- busy machine: numbers are noisy" if busy else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "prompt": args.prompt, "gen": args.gen, "reps": args.reps,
                       "rounds": args.rounds, "stat": args.stat, "load_average": [load_before, load_after],
                       "machine_bandwidth": machine, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
