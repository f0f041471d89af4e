#!/usr/bin/env python3
"""The instruction-count gate's bookkeeping, called by scripts/bench-gate.

    gate.py runner-version              the gungraun version Cargo.lock resolves (the runner
                                        binary must be this version, exactly)
    gate.py check RESULTS.jsonl         compare with baseline.toml; exit 1 on a breach
    gate.py update RESULTS.jsonl WHERE  rewrite baseline.toml from RESULTS (limits are kept);
                                        WHERE says what measured it (toolchain, machine)

RESULTS.jsonl is the gate bench's `--output-format=json` output: one gungraun benchmark summary
(schema version 7) per line. A bench's count is its callgrind total over all threads of the
`Ir` event (instructions executed). Its stable name is `<group>/<function>` with `_` in the
function's name read as `/` (`gate::pipeline::batch_64` is `pipeline/batch/64`).

Exit codes: 0 pass, 1 a bench breached its limit (or the set of benches changed), 2 usage or
unreadable input.
"""

import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE = Path(__file__).resolve().parent / "baseline.toml"
DEFAULT_LIMIT_PCT = 3.0
SCHEMA = "7"

HEADER = """\
# Instruction-count baseline of the gate (benches/benches/gate.rs), checked by scripts/bench-gate.
#
# `ir` is a bench's total instruction count under callgrind; `limit_pct` is how much more it may
# take before the gate fails (edit it by hand, with a reason, for a bench that needs another).
# Rewritten by `scripts/bench-gate --update-baseline`, which keeps the limits: the commit that
# does it says why the counts moved (a deliberate change, a new toolchain or dependency, ...).
#
# Counts depend on the compiler, the dependencies' versions, valgrind's version and the CPU
# features valgrind shows the program (ring picks its assembly by them), so they are comparable
# only on the kind of machine that measured them (`measured_on` below).
"""


def fail(msg, code=2):
    print(f"bench-gate: {msg}", file=sys.stderr)
    sys.exit(code)


def runner_version():
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    versions = {p["version"] for p in lock.get("package", []) if p["name"] == "gungraun"}
    if len(versions) != 1:
        fail(f"expected exactly one gungraun in Cargo.lock, found {sorted(versions) or 'none'}")
    print(versions.pop())


def stable_name(summary):
    name = f"{summary['group']}/{summary['function_name'].replace('_', '/')}"
    if summary.get("id"):
        name += f"/{summary['id']}"
    return name


def read_results(path):
    """{stable name: total Ir} from the bench's JSON lines, in the order they ran."""
    results = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        fail(f"cannot read {path}: {e}")
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            s = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: not JSON ({e})")
        if s.get("version") != SCHEMA:
            fail(f"{path}:{n}: gungraun summary schema {s.get('version')!r}, expected {SCHEMA!r}")
        name = stable_name(s)
        profiles = [p for p in s["profiles"] if p["tool"] == "Callgrind"]
        if len(profiles) != 1:
            fail(f"{name}: expected one Callgrind profile, found {len(profiles)}")
        try:
            ir = profiles[0]["data"]["total"]["metrics"]["Ir"]["values"]["new"]
        except KeyError:
            fail(f"{name}: no total Ir in the summary")
        if name in results:
            fail(f"{name}: measured twice")
        results[name] = int(ir)
    if not results:
        fail(f"{path}: no benchmark summaries (did the gate bench run?)")
    return results


# A drop larger than this fails the gate until the baseline records it (see `check`).
UNEXPLAINED_DROP_PCT = 50.0


def read_baseline():
    if not BASELINE.exists():
        return {}, {}
    doc = tomllib.loads(BASELINE.read_text())
    return doc.get("gate", {}), doc.get("bench", {})


def check(path):
    results = read_results(path)
    meta, base = read_baseline()
    if not base:
        fail(f"no baseline in {BASELINE.relative_to(ROOT)}: run scripts/bench-gate --update-baseline")
    default = float(meta.get("default_limit_pct", DEFAULT_LIMIT_PCT))
    rows, breaches, notes = [], [], []
    for name, b in base.items():
        old = int(b["ir"])
        limit = float(b.get("limit_pct", default))
        new = results.get(name)
        if new is None:
            breaches.append(f"{name}: in the baseline but not measured (renamed or removed?)")
            rows.append((name, f"{old:,}", "-", "-", f"+{limit:.1f}%", "MISSING"))
            continue
        delta = (new - old) / old * 100.0
        if delta > limit:
            status = "FAIL"
            breaches.append(
                f"{name}: {new:,} instructions vs baseline {old:,} "
                f"({delta:+.2f}% > +{limit:.1f}% limit)"
            )
        elif delta < -UNEXPLAINED_DROP_PCT:
            # Half the work gone is not a gain the gate may keep silently: most often the bench
            # no longer measures what it names (a renamed function its toggle follows, a
            # check that now fails early). A real gain is recorded with --update-baseline.
            status = "FAIL"
            breaches.append(
                f"{name}: {new:,} instructions vs baseline {old:,} ({delta:+.2f}%): more "
                f"than {UNEXPLAINED_DROP_PCT:.0f}% below; if the code is that much faster, "
                "record it with scripts/bench-gate --update-baseline, else the bench no "
                "longer measures what it names"
            )
        else:
            status = "ok"
            if delta < -limit:
                notes.append(
                    f"{name} is {-delta:.2f}% below its baseline: update the baseline "
                    "(scripts/bench-gate --update-baseline) so the gate keeps the gain"
                )
        rows.append((name, f"{old:,}", f"{new:,}", f"{delta:+.2f}%", f"+{limit:.1f}%", status))
    for name in results:
        if name not in base:
            breaches.append(f"{name}: measured but not in the baseline (new bench? update it)")
            rows.append((name, "-", f"{results[name]:,}", "-", "-", "NEW"))
    print_table(rows)
    if meta.get("measured_on"):
        print(f"baseline measured on: {meta['measured_on']}")
    for n in notes:
        print(f"note: {n}")
    if breaches:
        print()
        for b in breaches:
            print(f"bench-gate: FAILED {b}")
        sys.exit(1)
    print(f"bench-gate: passed ({len(rows)} benches within their limits)")


def print_table(rows):
    head = ("bench", "baseline Ir", "now Ir", "delta", "limit", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:5], widths[1:5])]
        print("  ".join(cells + [r[5]]).rstrip())


def update(path, measured_on):
    results = read_results(path)
    meta, base = read_baseline()
    default = float(meta.get("default_limit_pct", DEFAULT_LIMIT_PCT))
    out = [HEADER, "[gate]", f"default_limit_pct = {default}"]
    out.append(f"measured_on = {json.dumps(measured_on)}")
    for name, ir in results.items():
        limit = float(base.get(name, {}).get("limit_pct", default))
        out += ["", f"[bench.{json.dumps(name)}]", f"ir = {ir}", f"limit_pct = {limit}"]
    BASELINE.write_text("\n".join(out) + "\n")
    for name, ir in results.items():
        old = base.get(name, {}).get("ir")
        was = f" (was {int(old):,})" if old is not None else " (new)"
        print(f"{name}: {ir:,}{was}")
    print(f"bench-gate: wrote {BASELINE.relative_to(ROOT)}; say why in the commit message")


def main(argv):
    if len(argv) == 2 and argv[1] == "runner-version":
        runner_version()
    elif len(argv) == 3 and argv[1] == "check":
        check(argv[2])
    elif len(argv) == 4 and argv[1] == "update":
        update(argv[2], argv[3])
    else:
        fail(__doc__.strip().split("\n\n")[1])


if __name__ == "__main__":
    main(sys.argv)
