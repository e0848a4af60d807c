"""Per-rule wall and CPU time of a workflow run measured with the ``benchmarks/timed`` PATH shim.

    rm -rf /tmp/wf && AGREPA_TIMING=/tmp/wf.tsv PATH=$PWD/benchmarks/timed:$PATH \\
        snakemake --cores 2 --config results_dir=/tmp/wf
    python benchmarks/workflow_timing.py /tmp/wf.tsv

Each ``agrepa`` call is attributed to a rule by its subcommand (and ``--phase`` / ``--reference``
/ ``--section``). CPU = user + sys of the process and its children: on a machine shared with other
work, CPU seconds are the load-independent cost, and ``sum(CPU) / cores`` is the wall time the
same jobs need on an otherwise idle machine with perfect packing (a lower bound).
"""
import collections
import sys


def rule_of(args: str) -> str:
    a = args.split()
    cmd = a[0]
    if cmd in ("report", "data", "teacher", "tokens"):
        cmd += " " + a[1]
    for flag in ("--phase", "--section"):
        if flag in a:
            cmd += f" {flag} {a[a.index(flag) + 1]}"
    if "--reference" in a:
        cmd += " --reference"
    return cmd


def main(path: str) -> None:
    rows = []
    for line in open(path):
        start, wall, user, sys_, rc, args = line.rstrip("\n").split("\t", 5)
        rows.append((float(start), float(wall), float(user) + float(sys_), int(rc), rule_of(args)))
    if not rows:
        sys.exit(f"{path}: no timings")
    per = collections.defaultdict(list)
    for _, wall, cpu, rc, rule in rows:
        per[rule].append((wall, cpu))
    span = max(s + w for s, w, *_ in rows) - min(r[0] for r in rows)
    print(f"{'rule':42s} {'n':>4s} {'wall sum':>9s} {'wall mean':>9s} {'CPU sum':>8s} {'CPU mean':>8s}")
    for rule, v in sorted(per.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        w, c = sum(x for x, _ in v), sum(y for _, y in v)
        print(f"{rule:42s} {len(v):4d} {w:9.0f} {w / len(v):9.1f} {c:8.0f} {c / len(v):8.1f}")
    cpu = sum(r[2] for r in rows)
    print(f"\n{len(rows)} jobs, {sum(r[3] != 0 for r in rows)} failed; first start to last end {span:.0f} s; "
          f"CPU {cpu:.0f} s = {cpu / 2:.0f} s on 2 idle cores (lower bound)")


if __name__ == "__main__":
    main(sys.argv[1])
