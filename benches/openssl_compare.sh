#!/usr/bin/env bash
# Our ECDSA P-256 verify throughput beside `openssl speed ecdsap256`, on this machine, in one run.
#
#   benches/openssl_compare.sh            3 s per measurement (DURATION=5 for longer)
#
# openssl runs before and after our measurement, so a machine that changed speed in between
# shows as two different openssl figures; the ratio uses their mean. Both sides are one thread.
# Ours is criterion's `verify/single/<backend>` (benches/benches/core.rs): the check gatehouse
# makes on a device signature, from the public key's bytes, over the token's signed bytes
# (SHA-256 included) with the low-s rule. `openssl speed` verifies a fixed 20-byte digest with
# a parsed key: it hashes nothing, so it is the ceiling, not the same work.
# Targets: the fastest single backend at >= 0.9 x openssl (issue 6); the batch paths per
# signature (per-signature/*, issue 28): 64 distinct keys >= 2.2 x, one key >= 3.5 x,
# multi-buffer (AVX-512 IFMA) >= 3.5 x.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${DURATION:-3}"
export CARGO_TERM_COLOR=never

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v openssl >/dev/null; then
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y openssl
fi

# Build first, so that compiling does not fall between the two openssl runs.
cargo bench -p gatehouse-benches --bench core --locked --no-run >&2

openssl_verify_per_s() {
    openssl speed -seconds "$duration" ecdsap256 2>/dev/null | awk '/nistp256/ { print $NF }'
}

echo "openssl speed -seconds $duration ecdsap256 ..." >&2
before="$(openssl_verify_per_s)"
echo "cargo bench -p gatehouse-benches --bench core -- 'verify/single/|per-signature/' ..." >&2
# bencher format: `test verify/single/ring ... bench:  69,123 ns/iter (+/- 1,234)`; a
# per-signature/<path>/<n> iteration checks n signatures.
ours="$(cargo bench -p gatehouse-benches --bench core --locked -- --output-format bencher \
    --warm-up-time 1 --measurement-time "$duration" 'verify/single/|per-signature/' 2>/dev/null |
    awk '/^test (verify\/single|per-signature)\// { gsub(",", "", $5); print $2, $5 }')"
echo "openssl speed -seconds $duration ecdsap256 (again) ..." >&2
after="$(openssl_verify_per_s)"

python3 - "$before" "$after" "$ours" "$(openssl version | cut -d' ' -f1-2)" <<'PY'
import sys

before, after, ours, version = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
if not ours.strip():
    sys.exit("openssl_compare: no verify/single result from criterion")
ref = (before + after) / 2
print(f"{'verifier':<46}{'verify/s':>12}{'x openssl':>11}")
print(f"{version + ' speed ecdsap256':<46}{ref:>12,.0f}{1:>11.2f}   (runs: {before:,.0f}, {after:,.0f})")
best = 0.0
ratios = {}
for line in ours.strip().splitlines():
    name, ns = line.split()
    n = int(name.rsplit("/", 1)[1]) if name.startswith("per-signature/") else 1
    ns = float(ns) / n
    per_s = 1e9 / ns
    ratios[name] = per_s / ref
    if n == 1:
        best = max(best, per_s / ref)
    print(f"{'gatehouse ' + name:<46}{per_s:>12,.0f}{per_s / ref:>11.2f}   ({ns:,.0f} ns/signature)")
verdict = "meets" if best >= 0.9 else "misses"
print(f"fastest single backend: {best:.2f} x openssl ({verdict} the >= 0.9 x target)")
# Issue 28's targets, per core: 64 distinct keys >= 2.2 x, 64 under one key >= 3.5 x, IFMA
# (multi-buffer) >= 3.5 x.
for name, target in [("per-signature/equation-distinct/64", 2.2),
                     ("per-signature/equation-one-key/64", 3.5),
                     ("per-signature/multibuffer/8", 3.5)]:
    if name in ratios:
        r = ratios[name]
        print(f"{name}: {r:.2f} x openssl ({'meets' if r >= target else 'misses'} the >= {target} x target)")
PY
