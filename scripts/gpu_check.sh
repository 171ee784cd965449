#!/usr/bin/env bash
# The one-shot GPU check (docs/gpu.md): environment, an offline install, the `cuda` tests (tests/test_cuda.py), the
# papers' cost curve (`bench profile`, Vicuna-7B's shape) and a summary, all in one folder, in under 8 minutes.
# A failing step is recorded and the next one runs; the exit code is non-zero if any step failed.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR]
#
# --dry-run: the same steps on CPU at tiny sizes (the CUDA tests skip), to check the script on any machine.
# DIR (default: gpu-check/ in the repo root) gets log.txt, env.txt, junit.xml, profile/, steps.tsv, summary.txt.
# The Python is $GPU_CHECK_PYTHON, else .venv/bin/python when it exists, else python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/gpu-check
DRY=0
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=${2:?--out needs a folder}; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (usage: gpu_check.sh [--dry-run] [--out DIR])" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/profile" "$OUT/log.txt" "$OUT/env.txt" "$OUT/junit.xml" "$OUT/steps.tsv" "$OUT/summary.txt"

if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then PY=$GPU_CHECK_PYTHON
elif [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi

BUDGET=440  # seconds for all steps; each step's timeout leaves the later steps their reserve (8 minutes in all)
export ROOT OUT DRY PY
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network there: fail at once instead of waiting on the hub
export DECODEBENCH_CACHE=${DECODEBENCH_CACHE:-$OUT/cache}  # `bench profile` stores its curve in the cache too
if ((DRY)); then
  # On a small shared CPU machine, torch's spinning worker threads make tiny-model forwards ~50x slower.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

stamp() {  # prefix every line with the time of day
  local line
  while IFS= read -r line || [[ -n $line ]]; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done
}

step_env() {  # a. the machine, Python, torch, transformers, CUDA and the project's dependencies -> env.txt
  {
    echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "mode: $( ((DRY)) && echo 'dry run (CPU)' || echo 'GPU')"
    echo "host: $(uname -srm), $(getconf _NPROCESSORS_ONLN) cores"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'unknown (no git)')"
    echo "python: $PY"
    if command -v nvidia-smi >/dev/null; then
      timeout 30 nvidia-smi || echo "nvidia-smi failed (exit $?)"
    else
      echo "nvidia-smi: not found"
    fi
    "$PY" - <<'EOF'
import importlib.metadata as md
import os
import platform
import re
import sys
import tomllib

print(f"python {platform.python_version()} ({sys.executable})")
import torch

print(f"torch {torch.__version__} ({os.path.dirname(torch.__file__)}), built for CUDA {torch.version.cuda}")
import transformers

print(f"transformers {transformers.__version__}")
available = torch.cuda.is_available()
print(f"torch.cuda.is_available(): {available}")
for i in range(torch.cuda.device_count() if available else 0):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
if available:
    print(f"cuDNN {torch.backends.cudnn.version()}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
with open(os.path.join(os.environ["ROOT"], "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
missing = []
for requirement in wanted:
    name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        missing.append(name)
print(f"missing dependencies: {', '.join(missing) or 'none'}")
if not available and os.environ["DRY"] == "0":
    sys.exit("CUDA is not available: every CUDA test would skip")
EOF
  } 2>&1 | tee "$OUT/env.txt"
}

importable() {  # the project imports from outside the checkout, and it is this checkout; else print why not
  (cd "$OUT" && "$PY" -c 'import pathlib, sys, bench.cli, core, methods, tasks
found = pathlib.Path(bench.__file__).resolve().parents[1]
sys.exit(None if found == pathlib.Path(sys.argv[1]).resolve() else f"bench is imported from {found}")' "$ROOT" 2>&1 \
    | tail -1)
}

torch_install() { "$PY" -c 'import torch; print(torch.__version__, torch.__file__)' 2>&1 || true; }

step_install() {  # b. install this checkout without network; never touch torch
  local why before after
  if why=$(importable); then
    echo "the project is importable: nothing to install"
    return 0
  fi
  echo "the project is not importable from outside the checkout ($why)"
  echo "pip install --no-deps --no-build-isolation --no-index -e . (the later steps run in the checkout either way)"
  before=$(torch_install)
  "$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$ROOT"
  after=$(torch_install)
  if [[ $before != "$after" ]]; then
    echo "torch changed during the install: $before -> $after"
    return 1
  fi
  why=$(importable) || { echo "still not importable after the install: $why"; return 1; }
}

step_tests() {  # c. the cuda tests (dry run: every test of the file; the CUDA cases skip)
  local marks=cuda
  ((DRY)) && marks="not cuda or cuda"
  cd "$ROOT"
  "$PY" -m pytest -m "$marks" -q -rs -p no:cacheprovider -o junit_family=xunit1 \
    --junitxml="$OUT/junit.xml" tests/test_cuda.py
}

step_profile() {  # d. the cost curve c(q)/c(1) of the papers' setup (dry run: a tiny shape on CPU)
  cd "$ROOT"
  if ! "$PY" -m bench.cli --help >/dev/null 2>&1; then
    echo "the bench CLI does not start:"
    "$PY" -m bench.cli --help 2>&1 | tail -5
    return 1
  fi
  if ! "$PY" -m bench.cli profile --help >/dev/null 2>&1; then
    echo "NOTE: no \`bench profile\` in this version: cost curve skipped (not a failure)"
    return 0
  fi
  local args=(--shape vicuna-7b --dtype float16 --device cuda)
  local lists=()
  ((DRY)) && args=(--shape tiny --dtype float32 --device cpu --repeats 2) && lists=(--contexts 16 --queries 1,2)
  local rc=0
  "$PY" -m bench.cli profile "${args[@]}" "${lists[@]}" --out "$OUT/profile" 2>&1 | tee "$OUT/profile.out" || rc=$?
  if ((rc == 2 && ${#lists[@]})); then  # a usage error: the lists as separate values (`--queries 1 2`)
    echo "retrying with space-separated lists"
    rc=0
    "$PY" -m bench.cli profile "${args[@]}" --contexts 16 --queries 1 2 --out "$OUT/profile" 2>&1 \
      | tee "$OUT/profile.out" || rc=$?
  fi
  return "$rc"
}

step_summary() {  # e. pass/fail counts, the exact rates, c(q)/c(1), seconds per step -> summary.txt
  "$PY" - <<'EOF' | tee "$OUT/summary.txt"
import csv
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

out = Path(os.environ["OUT"])
mode = "dry run (CPU, tiny sizes)" if os.environ["DRY"] == "1" else "GPU"
steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
print(f"decodebench GPU check, {mode}: {out}")
print("\nsteps (seconds):")
for name, status, seconds in steps:
    print(f"  {name:<8} {status:<24} {seconds:>5}")
print(f"  {'total':<8} {'':<24} {sum(int(s) for *_, s in steps):>5}")

junit = out / "junit.xml"
if junit.is_file():
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    kinds = Counter(next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed") for case in cases)
    print(f"\ntests: {len(cases)} collected, {kinds['passed']} passed, {kinds['failure']} failed, "
          f"{kinds['error']} errors, {kinds['skipped']} skipped")
    for case in cases:
        name = f"{case.get('name')}"
        for child in case:
            if child.tag in ("failure", "error"):
                print(f"  {child.tag.upper()} {name}: {(child.get('message') or '').splitlines()[0][:160]}")
        for prop in case.iter("property"):
            print(f"  {name}: {prop.get('name')} = {prop.get('value')}")
    reasons = Counter((c.get("message") or "").splitlines()[0] for case in cases for c in case if c.tag == "skipped")
    for reason, n in reasons.most_common():
        print(f"  skipped {n}: {reason}")
else:
    print("\ntests: no junit.xml (the test step did not run to the end)")

profile = out / "profile" / "profile.csv"
if profile.is_file():
    rows = list(csv.DictReader(profile.open()))
    print(f"\ncost curve c(q)/c(1) ({profile.relative_to(out)}):")
    curves: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        curves.setdefault((r.get("backend", ""), r["context"]), {})[int(r["q"])] = float(r["ms"])
    for (backend, context), ms in curves.items():
        if 1 in ms:
            ratios = " ".join(f"q={q}:{ms[q] / ms[1]:.2f}" for q in sorted(ms))
            print(f"  {backend} L={context} c(1)={ms[1]:.3f} ms  {ratios}")
else:
    printed = out / "profile.out"
    lines = [s for s in printed.read_text().splitlines() if "c(" in s] if printed.is_file() else []
    print("\ncost curve, from the profile's output:" if lines else "\ncost curve: none (no profile/profile.csv)")
    for line in lines:
        print(f"  {line}")
failed = [name for name, status, _ in steps if status != "ok"]
print(f"\nresult: {'FAILED (' + ', '.join(failed) + ')' if failed else 'all steps passed'}")
EOF
}

export -f step_env importable torch_install step_install step_tests step_profile step_summary

run_step() {  # run_step NAME CAP RESERVE: run step_NAME with a timeout of CAP seconds, or less to leave RESERVE
  local name=$1 cap=$2 reserve=$3 rc=0 start=$SECONDS status
  local limit=$((BUDGET - SECONDS - reserve))
  ((limit > cap)) && limit=$cap
  ((limit < 10)) && limit=10
  echo "=== step $name (timeout ${limit}s)"
  timeout -k 5 "$limit" bash -c "set -euo pipefail; step_$name" || rc=$?
  if ((rc == 0)); then status=ok
  elif ((rc == 124 || rc == 137)); then status="TIMED OUT after ${limit}s"
  else status="FAILED (exit $rc)"; fi
  printf '%s\t%s\t%s\n' "$name" "$status" $((SECONDS - start)) >>"$OUT/steps.tsv"
  echo "=== step $name: $status in $((SECONDS - start))s"
  [[ $status == ok ]]
}

main() {
  echo "gpu_check.sh $( ((DRY)) && echo --dry-run) --out $OUT (python: $PY)"
  local failed=0
  run_step env 60 380 || failed=1
  run_step install 90 330 || failed=1
  run_step tests 300 100 || failed=1
  run_step profile 240 15 || failed=1
  run_step summary 15 0 || { failed=1; cat "$OUT/steps.tsv" >"$OUT/summary.txt"; }
  return "$failed"
}

set +e
main 2>&1 | stamp | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
