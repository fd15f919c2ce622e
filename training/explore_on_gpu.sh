#!/usr/bin/env bash
# Design exploration for the scenes model, run once on a lent GPU (the device tool): several variants of
# train_scenes_model.py in parallel, each with the step budget that fits the 90-minute CPU run (or a multiple of it),
# so the CPU run that makes the shipped weights uses the best measured design. Logs and reports land in $OUT.
# Wheels for what the GPU image lacks (diffusers, importlib_metadata, zipp) are expected in .whl/.
set -uo pipefail
OUT=${OUT:-explore_results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common="--device cuda --threads 2 --report-prompts 64 --report-cfg 1 2 3 4"
declare -A variants=(
  [base]="--transformer-steps 4400"
  [wide6]="--heads 6 --transformer-steps 2400"
  [deep]="--double-blocks 3 --single-blocks 6 --transformer-steps 3000"
  [more64]="--small-per-cycle 2 --transformer-steps 5500"
  [lr1e-3]="--lr 1e-3 --transformer-steps 4400"
  [long]="--transformer-steps 6000"
)
for name in "${!variants[@]}"; do
  timeout "${LIMIT:-500}" python3 training/train_scenes_model.py $common ${variants[$name]} \
    --output "/tmp/models/$name" > "$OUT/$name.log" 2>&1 &
done
wait
# at most 8 files come back: one summary of the reports, the logs in one archive
python3 - "$OUT" "${!variants[@]}" <<'PY'
import json, pathlib, sys
out, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
summary = {}
for name in names:
    report = pathlib.Path(f"/tmp/models/{name}/training_report.json")
    summary[name] = json.loads(report.read_text()) if report.exists() else None
    print(name, "no report" if summary[name] is None else {k: v["whole"] for k, v in summary[name]["adherence"].items()})
(out / "summary.json").write_text(json.dumps(summary, indent=1))
# the best variant's folder comes back too (held-out whole-check rate at its best guidance scale), to develop against
def best_rate(report):
    rates = report["adherence"]
    return max(v["whole"] for k, v in rates.items() if k.startswith("held_out/generated") and "64px" not in k)
done = {n: r for n, r in summary.items() if r is not None}
if done:
    best = max(done, key=lambda n: best_rate(done[n]))
    print("best", best, best_rate(done[best]))
    (out / "best.txt").write_text(best + "\n")
PY
best=$(cat "$OUT/best.txt" 2>/dev/null) && tar czf "$OUT/best_model.tar.gz" -C /tmp/models "$best"
tar czf "$OUT/logs.tar.gz" -C "$OUT" $(cd "$OUT" && ls *.log) && rm "$OUT"/*.log
