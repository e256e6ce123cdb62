"""Tables and the saturation arithmetic of ``bench/cluster.py``, from the runs it measured.

Kept apart from the measuring so each module stays readable; nothing here starts a process.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass, field

#: Slices of a typical diagnostic CT series, for the arithmetic beside the benchmark's own small series.
TYPICAL_SLICES = 300


@dataclass
class Run:
    """One configuration, one repeat. Rates per second of wall time; CPU in cores (1.0 = one core busy)."""

    ingest_ips: float  # phase 1: instances/s, no model running
    mixed_ips: float  # phase 2: instances/s while jobs run
    jobs_per_s: float
    p95_s: float
    infer_s: float
    ingest_node_cpu: list[float]
    ingest_machine_cpu: float
    ingest_load_cpu: float
    jobs_machine_cpu: float
    ingest_files_per_instance: float
    files_per_job: float
    ingest_pg_cpu: float = float("nan")
    ingest_commits_per_instance: float = float("nan")
    commits_per_job: float = float("nan")
    jobs_commits_per_s: float = float("nan")
    idle_commits_per_s: float = float("nan")
    dup_events: int = 0
    dup_jobs: int = 0
    dup_deliveries: int = 0
    failed_jobs: int = 0
    undelivered: int = 0


@dataclass
class Config:
    """One configuration: a key (its work folder), a label, how many nodes, and its runs."""

    key: str
    label: str
    nodes: int
    s3: bool = False  # the spool's shared copy on S3 (storage.spool_url) rather than a shared folder
    runs: list[Run] = field(default_factory=list)

    def med(self, attr: str) -> float:
        """Median of one measure over the repeats."""
        return statistics.median(float(getattr(r, attr)) for r in self.runs)

    def total(self, attr: str) -> int:
        """Sum of a count over the repeats."""
        return sum(int(getattr(r, attr)) for r in self.runs)


def report(configs: list[Config], capacity: dict[str, float], args: argparse.Namespace) -> None:
    """Print the side-by-side tables, the capacity probes and the saturation arithmetic."""
    anchor = configs[0]
    print(f"\nPer phase {args.series} series x {args.slices} slices of {args.size}x{args.size} CT "
          f"({args.series * args.slices} instances), {args.senders} storescu senders spread over the nodes, "
          f"{args.series_per_association or 'all of a sender'}'s series per association, quiet period {args.quiet_period} s, ct-body on ONNX Runtime CPU, "
          f"{os.cpu_count()} cores; medians of {args.repeats}; ratio = this / anchor (for p95, lower is better).\n")
    print("| configuration | nodes | ingest instances/s | ratio | instances/s while jobs run | ratio | jobs/s | ratio "
          "| p95 last instance -> SEG+SR delivered (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in configs:
        cells = [f"{c.med(a):.{d}f} | {c.med(a) / anchor.med(a):.2f}x" for a, d in
                 (("ingest_ips", 0), ("mixed_ips", 0), ("jobs_per_s", 2), ("p95_s", 2))]
        print(f"| {c.label} | {c.nodes} | " + " | ".join(cells) + " |")
    print("\nPer stage (medians; CPU in cores, 1.00 = one core busy, over the ingest phase unless marked; "
          "duplicates and failures summed over the repeats):\n")
    print("| configuration | writing commits per instance | writing commits per job | writing commits/s, jobs phase "
          "| idle writing commits/s | files per instance | files per job | inference s/job | CPU per node | PostgreSQL CPU "
          "| senders + receiver CPU | machine CPU, ingest / jobs | duplicate events / jobs / deliveries "
          "| failed jobs / undelivered series |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|---|")
    for c in configs:
        per_node = " + ".join(f"{statistics.median(r.ingest_node_cpu[i] for r in c.runs):.2f}" for i in range(c.nodes))
        print(f"| {c.label} x{c.nodes} | {c.med('ingest_commits_per_instance'):.2f} | {c.med('commits_per_job'):.1f} | "
              f"{c.med('jobs_commits_per_s'):.0f} | {c.med('idle_commits_per_s'):.1f} | "
              f"{c.med('ingest_files_per_instance'):.2f} | {c.med('files_per_job'):.2f} | {c.med('infer_s'):.3f} | "
              f"{per_node} | {c.med('ingest_pg_cpu'):.2f} | {c.med('ingest_load_cpu'):.2f} | "
              f"{c.med('ingest_machine_cpu'):.2f} / {c.med('jobs_machine_cpu'):.2f} | "
              f"{c.total('dup_events')} / {c.total('dup_jobs')} / {c.total('dup_deliveries')} | "
              f"{c.total('failed_jobs')} / {c.total('undelivered')} |")
    print(f"\nCapacity of the shared parts, same run, medians of one probe per repeat: pgbench one-row INSERT commits/s {capacity['pgbench_1']:.0f} "
          f"(1 client) and {capacity['pgbench_8']:.0f} (8 clients) on the same PostgreSQL 15 (fsync=on, "
          f"synchronous_commit=on); fsync'd file creations/s in the spool's folder, 8 writers, "
          f"{args.size * args.size * 2 // 1024} KiB each: {capacity['fsync']:.0f}"
          + (f"; object PUTs/s into moto S3, 8 writers, same size: {capacity['s3_puts']:.0f}."
             if capacity["s3_puts"] == capacity["s3_puts"] else "."))  # NaN: no S3 rows in this run
    one = next((c for c in configs[1:] if c.nodes == 1 and not c.s3), None)
    if one is not None:
        saturation(one, capacity, args.slices)
    one_s3 = next((c for c in configs[1:] if c.nodes == 1 and c.s3), None)
    if one_s3 is not None:
        s3_saturation(one_s3, capacity, args.slices)


def saturation(one: Config, capacity: dict[str, float], slices: int) -> None:
    """Demand of 1, 10 and 100 nodes on the shared parts, each node ingesting as fast as the one-node row did."""
    ips, cpi, cpj = one.med("ingest_ips"), one.med("ingest_commits_per_instance"), one.med("commits_per_job")
    fpi, fpj, infer = one.med("ingest_files_per_instance"), one.med("files_per_job"), one.med("infer_s")
    print(f"\nSaturation. Each node ingests {ips:.0f} instances/s (the one-node PostgreSQL row, one node per machine) and "
          f"runs one job per series; per instance it costs {cpi:.2f} writing commits and {fpi:.2f} file writes, per job "
          f"{cpj:.1f} writing commits, {fpj:.2f} file writes and {infer:.3f} s of inference.\n")
    print("| slices per series | nodes | commits/s needed | share of pgbench, 8 clients | file writes/s needed "
          "| share of one disk's fsync'd creations | inference-seconds/s needed |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    limits = []
    for s in (slices, TYPICAL_SLICES):
        jobs = ips / s
        db, files, gpu = ips * cpi + jobs * cpj, ips * fpi + jobs * fpj, jobs * infer
        limits.append((s, capacity["pgbench_8"] / db, capacity["fsync"] / files))
        for n in (1, 10, 100):
            print(f"| {s} | {n} | {n * db:.0f} | {n * db / capacity['pgbench_8']:.0%} | {n * files:.0f} | "
                  f"{n * files / capacity['fsync']:.0%} | {n * gpu:.2f} |")
    print()
    for s, db_nodes, file_nodes in limits:
        print(f"With {s} slices per series: one PostgreSQL's commits saturate at {db_nodes:.1f} nodes, one local "
              f"disk's fsync'd creations at {file_nodes:.1f} nodes.")


#: Amazon S3's documented floor: "at least 3,500 PUT/COPY/POST/DELETE ... requests per second per partitioned
#: prefix" (docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html); S3 partitions further
#: as the load grows.
S3_PUTS_PER_PREFIX = 3500


def s3_saturation(one: Config, capacity: dict[str, float], slices: int) -> None:
    """Object PUTs that 1, 10 and 100 nodes with the spool on S3 need, beside S3's documented floor and moto here."""
    ips, fpi, fpj = one.med("ingest_ips"), one.med("ingest_files_per_instance"), one.med("files_per_job")
    print(f"\nSpool on S3: one node ingests {ips:.0f} instances/s with {fpi:.2f} object PUTs per instance and "
          f"{fpj:.2f} per job (SEG and SR).\n")
    print("| slices per series | nodes | object PUTs/s needed | share of S3's 3,500/s per partitioned prefix "
          "| share of moto here |")
    print("|---:|---:|---:|---:|---:|")
    for s in (slices, TYPICAL_SLICES):
        puts = ips * fpi + ips / s * fpj
        for n in (1, 10, 100):
            print(f"| {s} | {n} | {n * puts:.0f} | {n * puts / S3_PUTS_PER_PREFIX:.0%} | {n * puts / capacity['s3_puts']:.0%} |")
