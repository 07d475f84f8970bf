#!/usr/bin/env bash
# Check that every exact pin of requirements-lock.txt resolves as binary wheels for the Pythons
# users have (CPython 3.10-3.14 on this platform: manylinux x86_64 in CI). Downloads metadata only; installs nothing.
# pip evaluates environment markers for the running interpreter, not for --python-version, so
# the markers are evaluated here for each target version first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in 3.10 3.11 3.12 3.13 3.14; do
    "$PY" - "$v" requirements-lock.txt > "$tmp/req-$v.txt" <<'PYEOF'
import sys

from packaging.requirements import Requirement

version, path = sys.argv[1], sys.argv[2]
env = {"python_version": version, "python_full_version": version + ".0"}
for line in open(path):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(env):
        print(f"{req.name}{req.specifier}")
PYEOF
    if ! out=$("$PY" -m pip install -q --dry-run --only-binary=:all: --python-version "$v" \
            --target "$tmp/$v" -r "$tmp/req-$v.txt" 2>&1); then
        echo "$out" | grep -v "is ignored: it is neither a file nor a directory" >&2
        echo "pins do not resolve for CPython $v" >&2
        exit 1
    fi
    echo "pins resolve for CPython $v ($(wc -l < "$tmp/req-$v.txt") packages)"
done
