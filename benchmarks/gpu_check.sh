#!/usr/bin/env bash
# The prepared device check: one call on a fresh GPU machine that has PyTorch but not mlflow or
# optuna, finished within BUDGET seconds (540: 9 minutes), everything written to $OUT as it comes.
#
#   here, once:  bash benchmarks/gpu_wheels.sh                      (the wheels the image lacks -> .whl/)
#   device:      run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#   CPU rehearsal (2-4 minutes on 2 cores, .venv, no wheels):
#     PY=.venv/bin/python DEVICE=cpu EPOCHS=2 TRAIN_SUBSET=256 WIDTH=0.25 N=256 bash benchmarks/gpu_check.sh
#
# Steps, each under its own timeout, each one's output in its own file as it runs:
#   0. set-up: the carried wheels and this project installed into $SITE (skipped where mlflow already
#      imports or SKIP_WHEELS=1, and where weightspace already imports from this checkout);
#   1. CUDA smoke tests: pytest -m cuda tests/test_cuda.py                            -> smoke.txt
#   2. throughput: seconds per model-epoch (fp32/tf32/bf16, 5 batched siblings), the trainer (with and without
#      step capture, step_capture=1) against the PyTorch-example loop (fp32/tf32/bf16), K=5 batched (with and
#      without step capture) against sequential and K processes -> throughput.md
#   3. the paper-scale `single` run (full MNIST, width 1.0, 200 epochs, a snapshot every epoch) through
#      `mlflow run` into a sqlite store on the machine, its analysis, and `python -m weightspace export`
#      -> paper-scale.txt, paper-scale/{metrics.json,report.md,figures.tar} (never the snapshots); without
#      an export, paper-scale/run-metrics.json keeps the run's per-epoch metrics.
#      Its epochs are sized from step 2's measured seconds per epoch to the time left: if 200 do not
#      fit, it runs as many as fit and the summary says so.
#   4. the paper's whole suite (STEPS=4, a call of its own): 4a. SUITE_K paper models batched, timed with and
#      without step capture, the faster chosen; 4b. `mlflow run -e paper -P siblings=batched` (every run of the
#      suite as one batch of models, then one analysis per family and analysis-families); 4c. `python -m
#      weightspace export --suite` -> suite.tar (a folder per analysis: metrics.json, report.md, figures/)
#   5. the instability sweep (STEPS=5, a call of its own): `mlflow run -e instability` at the paper's
#      width on full MNIST for INSTAB_EPOCHS epochs (copies spawned at SPAWN_EPOCHS, two per spawn)
#      -> instability.txt, instability.tar (instability.md, instability.png, metrics.json: every
#      instability_* metric and lmc_onset_epoch as the run logged them)
# At the end (and after every step, so a timeout leaves one too): summary.md, one table. log.txt has
# everything. That is 8 files, the most the device tool brings back.
#
# Environment (defaults are the GPU check's):
#   DEVICE=cuda  PY=python3  BUDGET=540 (s, whole script)  OUT=$OUT or ./gpu-out  SITE=<tmp>/site
#   WHEELS=.whl  SKIP_WHEELS=0  STEPS="1 2 3"
#   N=20000 (images per timed throughput epoch)  REPEATS=3  COST_EPOCHS=2  K=5  PRECISIONS="fp32 tf32 bf16" (cpu: fp32)
#   EPOCHS=200  TRAIN_SUBSET=0 (full MNIST)  WIDTH=1.0  ANALYSIS_ARGS="" (extra -P for the analysis)
#   SINGLE_ARGS="" (extra -P for the single run, e.g. "-P step_capture=1")
#   EPOCH_SECONDS="" (step 3's seconds per epoch of train + evaluation, instead of step 2's measurement)
#   STEP3_KEEP=330 (s kept for step 3 while steps 1-2 run)  ANALYSIS_RESERVE=150 (s kept for analysis + export)
#   RUN_OVERHEAD=45 (s for `mlflow run` to start and end, beside the epochs)
#   REPLICAS=5  PRETRAIN_EPOCHS=10  SUITE_K=16  SUITE_ARGS="" (extra -P for the paper run)  EXPORT_RESERVE=30
#   INSTAB_EPOCHS=30  SPAWN_EPOCHS=0,1,2,5,10,20  INSTAB_ARGS="" (extra -P for the instability run)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
T0=$(date +%s)
BUDGET=${BUDGET:-540}
DEADLINE=$((T0 + BUDGET))
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
OUT=${OUT:-$REPO/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
SITE=${SITE:-$WORK/site}
WHEELS=${WHEELS:-.whl}
SKIP_WHEELS=${SKIP_WHEELS:-0}
STEPS=${STEPS:-1 2 3}
N=${N:-20000}
REPEATS=${REPEATS:-3}
COST_EPOCHS=${COST_EPOCHS:-2}
K=${K:-5}
if [ "${DEVICE%%:*}" = cuda ]; then PRECISIONS=${PRECISIONS:-fp32 tf32 bf16}; else PRECISIONS=${PRECISIONS:-fp32}; fi
EPOCHS=${EPOCHS:-200}
TRAIN_SUBSET=${TRAIN_SUBSET:-0}
WIDTH=${WIDTH:-1.0}
ANALYSIS_ARGS=${ANALYSIS_ARGS:-}
SINGLE_ARGS=${SINGLE_ARGS:-}
EPOCH_SECONDS=${EPOCH_SECONDS:-}
STEP3_KEEP=${STEP3_KEEP:-330}
ANALYSIS_RESERVE=${ANALYSIS_RESERVE:-150}
RUN_OVERHEAD=${RUN_OVERHEAD:-45}
REPLICAS=${REPLICAS:-5}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}
SUITE_K=${SUITE_K:-16}
SUITE_ARGS=${SUITE_ARGS:-}
EXPORT_RESERVE=${EXPORT_RESERVE:-30}
INSTAB_EPOCHS=${INSTAB_EPOCHS:-30}
SPAWN_EPOCHS=${SPAWN_EPOCHS:-0,1,2,5,10,20}
INSTAB_ARGS=${INSTAB_ARGS:-}
EXPERIMENT=gpu-check

export PYTHONUNBUFFERED=1 GIT_PYTHON_REFRESH=quiet MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" \
  WEIGHTSPACE_CACHE="$WORK/cache" MPLBACKEND=Agg
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
rm -f "$OUT"/summary.md "$OUT"/log.txt "$OUT"/smoke.txt "$OUT"/throughput.md "$OUT"/paper-scale.txt
rm -rf "$OUT"/paper-scale "$OUT"/suite.tar "$OUT"/suite.txt "$OUT"/instability.tar "$OUT"/instability.txt
exec > >(tee -a "$OUT/log.txt") 2>&1

now() { date +%s; }
left() { echo $((DEADLINE - $(now))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
ROWS=$WORK/rows.md
NOTES=$WORK/notes.md
: > "$ROWS"
: > "$NOTES"
note() { echo "- $*" >> "$NOTES"; echo "note: $*"; }
row() { echo "| $1 | $2 | $3 | $4 |" >> "$ROWS"; write_summary; }   # step, status, seconds, result
status_of() {  # exit code -> words
  case $1 in 0) echo ok ;; 124|137) echo "timed out" ;; *) echo "failed (exit $1)" ;; esac
}
write_summary() {
  {
    echo "# Device check: $(date -u '+%Y-%m-%d %H:%M UTC'), device=$DEVICE"
    echo
    cat "$WORK/machine.txt" 2>/dev/null
    echo
    echo "| step | status | seconds | result |"
    echo "| --- | --- | --- | --- |"
    cat "$ROWS"
    echo
    echo "$(( $(now) - T0 )) s of the ${BUDGET} s budget used so far."
    if [ -s "$NOTES" ]; then echo; echo "Notes:"; cat "$NOTES"; fi
  } > "$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
}
# Run one command under a timeout of $2 s (at most what is left), its output also into file $3.
run_step() {
  local limit=$1 out=$2
  shift 2
  limit=$(min "$limit" "$(( $(left) - 5 ))")
  if [ "$limit" -lt 10 ]; then echo "(no time left for: $*)"; return 124; fi
  echo "\$ $* (timeout ${limit}s)" | tee -a "$out"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$out"
  return "${PIPESTATUS[0]}"
}
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

echo "== device check: DEVICE=$DEVICE BUDGET=${BUDGET}s OUT=$OUT WORK=$WORK $(date -u +%T)"
# `mlflow run` runs the entry points with `python`: make it this interpreter, whatever PATH holds.
mkdir -p "$WORK/bin"
PYEXE=$("$PY" -c 'import sys; print(sys.executable)') || { echo "error: PY=$PY does not run"; exit 2; }
PY=$PYEXE   # absolute: some steps run from another directory
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PYEXE" > "$WORK/bin/python"
chmod +x "$WORK/bin/python"
export PATH="$WORK/bin:$PATH"
{
  echo "- machine: $(getconf _NPROCESSORS_ONLN) CPUs, $(uname -r); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
  "$PY" -c 'import platform, torch; print(f"- python {platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))' 2>&1
  if commit=$(git rev-parse --short HEAD 2>/dev/null); then
    echo "- commit: $commit$(git diff --quiet HEAD -- 2>/dev/null || echo ' + uncommitted changes')"
  else
    echo "- commit: unknown (the tree came without .git)"
  fi
  echo "- sizes: N=$N REPEATS=$REPEATS K=$K PRECISIONS='$PRECISIONS' EPOCHS=$EPOCHS TRAIN_SUBSET=$TRAIN_SUBSET WIDTH=$WIDTH"
} > "$WORK/machine.txt"
cat "$WORK/machine.txt"
write_summary

# -- 0. set-up -------------------------------------------------------------------------------------------
t=$(now)
setup_ok=1
setup=""
if [ "$SKIP_WHEELS" = 1 ]; then
  setup="wheels: skipped (SKIP_WHEELS=1)"
elif "$PY" -c 'import mlflow, optuna' 2>/dev/null; then
  setup="wheels: not needed (mlflow and optuna import)"
elif ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  echo "== 0. installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE"
  if timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$SITE" "$WHEELS"/*.whl; then
    setup="wheels: $(ls "$WHEELS"/*.whl | wc -l) installed"
  else
    setup="wheels: install FAILED"; setup_ok=0
  fi
else
  setup="wheels: none in $WHEELS/ and mlflow does not import (run benchmarks/gpu_wheels.sh, carry .whl)"; setup_ok=0
fi
if "$PY" -c 'import sys, weightspace, weightspace.analysis; sys.exit(0 if weightspace.__file__.startswith(sys.argv[1]) else 1)' \
     "$REPO/" 2>/dev/null; then
  setup="$setup; project: imports from this checkout"
else
  # Installed from a copy, so nothing is built inside the checkout; pip maps analysis/ to
  # weightspace.analysis and writes the entry-point metadata MLflow's plugins read.
  mkdir -p "$WORK/pkg"
  cp -r pyproject.toml README.md src analysis "$WORK/pkg/"
  if timeout 180 "$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
       --target "$SITE" "$WORK/pkg"; then
    setup="$setup; project: installed into $SITE"
  elif "$PY" - "$WORK/pkg" "$SITE" <<'EOF'
# No build backend that works (an old setuptools without bdist_wheel, say): lay the package out as
# pyproject.toml maps it, with a dist-info holding its entry points (MLflow's plugins read them).
import shutil, sys, tomllib
from pathlib import Path
src, site = Path(sys.argv[1]), Path(sys.argv[2])
meta = tomllib.loads((src / "pyproject.toml").read_text())
proj, tool = meta["project"], meta["tool"]["setuptools"]
for pkg, folder in sorted(tool["package-dir"].items()):
    dest = site.joinpath(*pkg.split("."))
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src / folder, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
info = site / f"{proj['name']}-{proj['version']}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {proj['name']}\nVersion: {proj['version']}\n")
eps = proj.get("entry-points", {})
(info / "entry_points.txt").write_text("".join(
    f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n" for group, items in eps.items()))
print(f"copied {', '.join(sorted(tool['package-dir']))} into {site}")
EOF
  then
    setup="$setup; project: pip could not build it, copied into $SITE"
  else
    setup="$setup; project: install FAILED"; setup_ok=0
  fi
fi
if [ "$setup_ok" = 1 ] && ! "$PY" -c 'import mlflow, optuna, weightspace.analysis, weightspace.cli' 2>&1; then
  setup="$setup; imports FAILED"; setup_ok=0
fi
echo "$setup"
row "0. set-up" "$([ "$setup_ok" = 1 ] && echo ok || echo failed)" "$(( $(now) - t ))" "$setup"

# -- 1. CUDA smoke tests ---------------------------------------------------------------------------------
if want 1; then
  echo "== 1. CUDA smoke tests $(date -u +%T)"
  t=$(now)
  run_step "$(min 150 $(( $(left) - STEP3_KEEP )))" "$OUT/smoke.txt" \
    "$PY" -m pytest -m cuda tests/test_cuda.py -v -rs -p no:cacheprovider -o addopts=""
  rc=$?
  res=$(grep -E '^=+ .*(passed|failed|skipped|error).* in [0-9.]+s' "$OUT/smoke.txt" | tail -1 | sed -E 's/=+//g; s/^ +| +$//g')
  grep -q "needs a CUDA device" "$OUT/smoke.txt" && res="$res (no CUDA device: every test skipped)"
  row "1. CUDA smoke tests (tests/test_cuda.py)" "$(status_of $rc)" "$(( $(now) - t ))" "${res:-no result}"
fi

# -- 2. throughput -----------------------------------------------------------------------------------------
if want 2; then
  echo "== 2. throughput $(date -u +%T)"
  # The epoch cost first: step 3 sizes itself from its fp32 seconds per epoch.
  t=$(now)
  echo "## Seconds per model-epoch (train + both evaluations)" >> "$OUT/throughput.md"
  run_step "$(min 120 $(( $(left) - STEP3_KEEP )))" "$OUT/throughput.md" \
    "$PY" benchmarks/epoch_cost.py --device "$DEVICE" --epochs "$COST_EPOCHS" --train-subset "$TRAIN_SUBSET" --width "$WIDTH" \
    --precision $PRECISIONS --batched --json "$WORK/epoch_cost.json"
  rc=$?
  res=$("$PY" - "$WORK/epoch_cost.json" <<'EOF' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{d['n_train']} images, width {d['width']}: " + "; ".join(
    f"{r['variant']}: {r['seconds_per_model_epoch']:.2f} s (eval {r['eval_seconds']:.2f}), suite ~{r['suite_minutes']:.0f} min"
    for r in d["rows"]))
EOF
)
  row "2a. seconds per model-epoch (epoch_cost.py)" "$(status_of $rc)" "$(( $(now) - t ))" "${res:-no result}"

  t=$(now)
  echo -e "\n## Training throughput: the trainer against the PyTorch-example loop" >> "$OUT/throughput.md"
  run_step "$(min 150 $(( $(left) - STEP3_KEEP )))" "$OUT/throughput.md" \
    "$PY" benchmarks/train_throughput.py --device "$DEVICE" --n "$N" --repeats "$REPEATS" --width "$WIDTH" \
    --precisions $PRECISIONS --levers --json "$WORK/train_throughput.json"
  rc=$?
  res=$("$PY" - "$WORK/train_throughput.json" <<'EOF' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
parts = []
for r in d["rows"]:
    if r["variant"].startswith("weightspace") and "step capture" not in r["variant"] and (
            "Trainer.train_epoch" in r["variant"] or "precision=" in r["variant"]):
        vs = f" = {r['vs_ref_same']:.2f}x the reference" if r.get("vs_ref_same") else ""
        parts.append(f"trainer {r['precision']}: {r['samples_per_s']:.0f} samples/s{vs}")
ref = "" if d["reference"] else " (no torchvision: no reference)"
cap = [f"{r['precision']} {r['samples_per_s']:.0f}/s" for r in d["rows"] if "step capture" in r["variant"]]
print(f"{d['n']} images/epoch: " + "; ".join(parts) + ref + "; with step capture: " + (", ".join(cap) or "not timed (CPU)"))
EOF
)
  row "2b. trainer vs PyTorch example (train_throughput.py)" "$(status_of $rc)" "$(( $(now) - t ))" "${res:-no result}"

  t=$(now)
  echo -e "\n## K siblings: batched (vmap) against sequential and against K processes" >> "$OUT/throughput.md"
  run_step "$(min 120 $(( $(left) - STEP3_KEEP )))" "$OUT/throughput.md" \
    "$PY" benchmarks/siblings.py --device "$DEVICE" --k "$K" --n "$N" --repeats "$REPEATS" --width "$WIDTH" \
    --json "$WORK/siblings.json"
  rc=$?
  res=$("$PY" - "$WORK/siblings.json" <<'EOF' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print(f"K={d['k']}, {d['n']} images/model-epoch: " + "; ".join(
    f"{r['variant']}: {r['model_samples_per_s']:.0f} model-samples/s ({r['vs_sequential']:.2f}x)" for r in d["rows"]))
EOF
)
  row "2c. K siblings (siblings.py)" "$(status_of $rc)" "$(( $(now) - t ))" "${res:-no result}"
fi

# -- 3. the paper-scale single run, its analysis, the export ------------------------------------------------
if want 3; then
  echo "== 3. paper-scale single run $(date -u +%T)"
  t=$(now)
  P3="$OUT/paper-scale.txt"
  if [ "$setup_ok" != 1 ]; then
    row "3. paper-scale single run" "skipped" 0 "the set-up failed: no mlflow or no project"
  else
    # Seconds per epoch: step 2's fp32 train + evaluation, else a one-epoch measurement now.
    per=${EPOCH_SECONDS:-$("$PY" -c 'import json,sys; r=[r for r in json.load(open(sys.argv[1]))["rows"] if r["precision"]=="fp32" and not r["batched"]]; print(r[0]["seconds_per_model_epoch"])' \
          "$WORK/epoch_cost.json" 2>/dev/null)}
    if [ -z "$per" ] && [ "$(left)" -gt $((ANALYSIS_RESERVE + 60)) ]; then
      run_step "$(min 90 $(( $(left) - ANALYSIS_RESERVE - 40 )))" "$P3" "$PY" benchmarks/epoch_cost.py --device "$DEVICE" --epochs 1 --train-subset "$TRAIN_SUBSET" \
        --width "$WIDTH" --precision fp32 --json "$WORK/epoch_cost1.json"
      per=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["rows"][0]["seconds_per_model_epoch"])' \
            "$WORK/epoch_cost1.json" 2>/dev/null)
    fi
    plan=$("$PY" - "${per:-}" "$(left)" "$ANALYSIS_RESERVE" "$EPOCHS" "$RUN_OVERHEAD" <<'EOF'
import sys
per, left, reserve, epochs, overhead = sys.argv[1], *map(int, sys.argv[2:6])
# Logging (snapshot + checkpoint + metrics every epoch, off the training thread) and the store:
# 20 % and 0.2 s per epoch on top of the bare train + evaluation; RUN_OVERHEAD s to start mlflow,
# torch and CUDA, and to end the run.
# No measurement at all (step 2 and the one-epoch measurement failed): a short run rather than one
# that cannot finish (an unfinished run is not analysed).
est = float(per) * 1.2 + 0.2 if per else None
avail = left - reserve - overhead
fit = min(epochs, 20) if est is None else max(0, min(epochs, int(avail / est)))
print(fit, f"{est:.2f}" if est else "unknown", max(avail, 0))
EOF
)
    read -r E EST AVAIL <<< "$plan"
    echo "plan: ${E} of ${EPOCHS} epochs at an estimated ${EST} s/epoch in ${AVAIL} s (kept ${ANALYSIS_RESERVE} s for analysis + export)" | tee -a "$P3"
    if [ "$EST" = unknown ]; then
      note "step 3: no measured seconds per epoch (step 2 and the one-epoch measurement gave none): $E of $EPOCHS epochs were run"
    elif [ "$E" -lt "$EPOCHS" ]; then
      note "step 3: only $E of the $EPOCHS epochs fit in the time left (estimated $EST s/epoch, ${AVAIL} s); the single run trained $E epochs, not the $EPOCHS asked for"
    fi
    if [ "$E" -lt 1 ]; then
      row "3. paper-scale single run" "skipped" 0 "no time left for one epoch"
    else
      (cd "$WORK" && "$PY" -m weightspace init-store && "$PY" - "$EXPERIMENT" "$WORK/artifacts" <<'EOF'
import sys
from pathlib import Path
from mlflow.tracking import MlflowClient
MlflowClient().create_experiment(sys.argv[1], artifact_location=Path(sys.argv[2]).as_uri())
EOF
      ) 2>&1 | tee -a "$P3"
      MLRUN=("$PY" -m mlflow run "$REPO" --env-manager local --experiment-name "$EXPERIMENT")
      # A run killed before it ends is not analysed: it may eat into half of the analysis' reserve.
      run_step $(( $(left) - ANALYSIS_RESERVE / 2 )) "$P3" "${MLRUN[@]}" -e single -P device="$DEVICE" \
        -P epochs="$E" -P train_subset="$TRAIN_SUBSET" -P width="$WIDTH" -P snapshot_every=1 $SINGLE_ARGS
      rc=$?
      info=$(cd "$WORK" && "$PY" - "$EXPERIMENT" <<'EOF' 2>/dev/null
import sys
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name(sys.argv[1])
runs = c.search_runs([exp.experiment_id], "tags.`weightspace.experiment` = 'single'", order_by=["attributes.start_time DESC"])
r = runs[0]
secs = [m.value for m in c.get_metric_history(r.info.run_id, "epoch_seconds")]
print(r.info.run_id, r.info.status, r.data.tags.get("weightspace.group", "-"), len(secs),
      f"{sum(secs) / max(1, len(secs)):.2f}", r.data.params.get("resolved_device", "?"))
EOF
)
      read -r RID RSTATUS RGROUP REPOCHS RSEC RDEV <<< "${info:-- - - 0 - -}"
      echo "single run: id $RID, $RSTATUS, group $RGROUP, $REPOCHS epochs logged, ${RSEC} s/epoch training, device $RDEV" | tee -a "$P3"
      row "3a. single run (mlflow run -e single${SINGLE_ARGS:+ $SINGLE_ARGS})" "$(status_of $rc)" "$(( $(now) - t ))" \
        "run $RID $RSTATUS on $RDEV: $REPOCHS of $E epochs logged (planned $E of $EPOCHS), ${RSEC} s/epoch of training (epoch_seconds), group $RGROUP"
      if [ "$RSTATUS" = FINISHED ]; then
        t=$(now)
        run_step $(( $(left) - 20 )) "$P3" "${MLRUN[@]}" -e analysis -P run_ids="$RID" -P device="$DEVICE" $ANALYSIS_ARGS
        rc=$?
        row "3b. analysis (mlflow run -e analysis)" "$(status_of $rc)" "$(( $(now) - t ))" \
          "probes on $DEVICE${ANALYSIS_ARGS:+ ($ANALYSIS_ARGS)}; its claims table is in paper-scale.txt and paper-scale/report.md"
        if [ "$rc" = 0 ]; then
          t=$(now)
          run_step $(( $(left) - 3 )) "$P3" "$PY" -m weightspace export "$RID" "$WORK/export"
          rc=$?
          if [ "$rc" = 0 ] && [ -f "$WORK/export/metrics.json" ]; then
            mkdir -p "$OUT/paper-scale"
            cp "$WORK/export/metrics.json" "$WORK/export/report.md" "$OUT/paper-scale/"
            tar -cf "$OUT/paper-scale/figures.tar" -C "$WORK/export" figures
            res=$("$PY" - "$OUT/paper-scale/metrics.json" <<'EOF' 2>/dev/null
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{m['epochs']} epochs, {m['n_snapshots']} snapshots, top-2 PCs {100 * m['pca_evr_top2']:.2f}% (null {100 * m['null_evr_top2']:.2f}%), "
      f"top-10 {100 * m['pca_evr_top10']:.2f}% (null {100 * m['null_evr_top10']:.2f}%), final test accuracy {m['final_test_accuracy']:.4f}, "
      f"{m['train_seconds']:.1f} s of training, {m['wall_seconds']:.0f} s wall")
EOF
)
            row "3c. export (metrics.json, report.md, figures.tar)" "ok" "$(( $(now) - t ))" "${res:-exported}"
          else
            row "3c. export" "$(status_of $rc)" "$(( $(now) - t ))" "see paper-scale.txt"
          fi
        fi
      else
        row "3b. analysis" "skipped" 0 "the single run is $RSTATUS, not FINISHED"
      fi
      if [ ! -f "$OUT/paper-scale/metrics.json" ] && [ "$RID" != - ]; then
        # No export: keep at least the run's per-epoch metrics (epoch_seconds among them).
        mkdir -p "$OUT/paper-scale"
        (cd "$WORK" && timeout 30 "$PY" - "$RID" "$OUT/paper-scale/run-metrics.json" <<'EOF'
import json, sys
from mlflow.tracking import MlflowClient
c = MlflowClient()
r = c.get_run(sys.argv[1])
hist = {k: [[m.step, m.value] for m in c.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
json.dump({"run_id": r.info.run_id, "status": r.info.status, "params": r.data.params, "tags": r.data.tags,
           "metrics_by_epoch": hist}, open(sys.argv[2], "w"), indent=1)
print(f"wrote {sys.argv[2]}: the single run's metric histories (no export)")
EOF
        ) || true
      fi
    fi
  fi
fi

# -- 4. the paper's whole suite, one batch of models, its analyses, the export ---------------------------------
if want 4; then
  echo "== 4. paper suite $(date -u +%T)"
  P4="$OUT/suite.txt"
  t=$(now)
  run_step "$(min 90 $(( $(left) - 60 )))" "$P4" "$PY" benchmarks/siblings.py --device "$DEVICE" --k "$SUITE_K" --n "$N" \
    --repeats 1 --width "$WIDTH" --json "$WORK/suite_variants.json"
  rc=$?
  read -r CAP CHOICE <<< "$("$PY" - "$WORK/suite_variants.json" <<'EOF' 2>/dev/null
import json, sys
rows = {r["variant"].split(",")[0]: r["model_samples_per_s"] for r in json.load(open(sys.argv[1]))["rows"]}
plain, cap = rows.get("BatchedTrainer (vmap)"), rows.get("BatchedTrainer (vmap) + step capture")
faster = bool(cap and plain and cap > plain)
print(int(faster), f"vmap {plain or 0:.0f} model-samples/s, " +
      (f"with step capture {cap:.0f}" if cap else "step capture not timed (it needs CUDA)"))
EOF
)"
  CAP=${CAP:-0}
  row "4a. $SUITE_K batched paper models (siblings.py)" "$(status_of $rc)" "$(( $(now) - t ))" \
    "${CHOICE:-no measurement}: step_capture=$CAP chosen"
  if [ "$setup_ok" != 1 ]; then
    row "4b. paper suite" "skipped" 0 "the set-up failed: no mlflow or no project"
  else
    t=$(now)
    (cd "$WORK" && "$PY" -m weightspace init-store >/dev/null && "$PY" -c \
      'from mlflow.tracking import MlflowClient; MlflowClient().create_experiment("suite")') 2>&1 | tee -a "$P4"
    run_step $(( $(left) - EXPORT_RESERVE )) "$P4" "$PY" -m mlflow run "$REPO" --env-manager local --experiment-name suite \
      -e paper -P device="$DEVICE" -P siblings=batched -P step_capture="$CAP" -P epochs="$EPOCHS" \
      -P train_subset="$TRAIN_SUBSET" -P width="$WIDTH" -P replicas="$REPLICAS" -P pretrain_epochs="$PRETRAIN_EPOCHS" $SUITE_ARGS
    rc=$?
    info=$(cd "$WORK" && "$PY" - <<'EOF' 2>/dev/null
from mlflow.tracking import MlflowClient
c = MlflowClient()
runs = c.search_runs([c.get_experiment_by_name("suite").experiment_id])
parent = [r for r in runs if r.data.tags.get("weightspace.experiment") == "paper"][0]
kinds = ("single", "different_init", "same_init", "pretrain", "clone")
trained = [r for r in runs if r.data.tags.get("weightspace.experiment") in kinds]
hist = {r.info.run_id: c.get_metric_history(r.info.run_id, "epoch_seconds") for r in trained}
secs = sum(m.value for h in hist.values() for m in h)
samples = sum(int(r.data.params.get("n_train", 0)) * len(hist[r.info.run_id]) for r in trained)
done = sum(r.info.status == "FINISHED" for r in trained)
print(parent.info.run_id, parent.info.status, done, len(trained), f"{samples / max(secs, 1e-9):.0f}")
EOF
)
    read -r PID PSTATUS NDONE NRUNS RATE <<< "${info:-- - 0 0 -}"
    row "4b. paper suite (mlflow run -e paper -P siblings=batched)" "$(status_of $rc)" "$(( $(now) - t ))" \
      "paper run $PID $PSTATUS: $NDONE of $NRUNS training runs FINISHED; $RATE model-samples/s of training (epoch_seconds)"
    if [ "$PSTATUS" = FINISHED ]; then
      t=$(now)
      run_step $(( $(left) - 3 )) "$P4" "$PY" -m weightspace export --suite "$PID" "$WORK/suite"
      rc=$?
      if [ "$rc" = 0 ]; then
        tar -cf "$OUT/suite.tar" -C "$WORK" suite
        row "4c. export --suite (suite.tar)" "ok" "$(( $(now) - t ))" "one folder per analysis: $(ls "$WORK/suite" | tr '\n' ' ')"
      else
        row "4c. export --suite" "$(status_of $rc)" "$(( $(now) - t ))" "see suite.txt"
      fi
    fi
  fi
fi

# -- 5. the instability sweep: copies spawned at k, their barriers raw and aligned ---------------------------
if want 5; then
  echo "== 5. instability sweep $(date -u +%T)"
  P5="$OUT/instability.txt"
  if [ "$setup_ok" != 1 ]; then
    row "5. instability sweep" "skipped" 0 "the set-up failed: no mlflow or no project"
  else
    t=$(now)
    (cd "$WORK" && "$PY" -m weightspace init-store >/dev/null) 2>&1 | tee -a "$P5"
    run_step $(( $(left) - 15 )) "$P5" "$PY" -m mlflow run "$REPO" --env-manager local --experiment-name "$EXPERIMENT" \
      -e instability -P device="$DEVICE" -P epochs="$INSTAB_EPOCHS" -P spawn_epochs="$SPAWN_EPOCHS" \
      -P train_subset="$TRAIN_SUBSET" -P width="$WIDTH" $INSTAB_ARGS
    rc=$?
    mkdir -p "$WORK/instability"
    res=$(cd "$WORK" && timeout 60 "$PY" - "$WORK/instability" "$EXPERIMENT" <<'EOF' 2>&1
import json, sys
from pathlib import Path
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name(sys.argv[2])
runs = c.search_runs([exp.experiment_id], "tags.`weightspace.experiment` = 'instability'",
                     order_by=["attributes.start_time DESC"]) if exp else []
if not runs:
    sys.exit("no instability run in the store")
r = runs[0]
out = Path(sys.argv[1])
for name in ("instability.md", "instability.png"):
    try:
        c.download_artifacts(r.info.run_id, name, str(out))
    except Exception as e:  # a sweep cut short has no figure: say so, keep the metrics
        print(f"({name} missing: {type(e).__name__})")
keep = {k: v for k, v in r.data.metrics.items() if k.startswith("instability") or k == "lmc_onset_epoch"}
json.dump({"run_id": r.info.run_id, "status": r.info.status, "params": r.data.params, "metrics": keep},
          open(out / "metrics.json", "w"), indent=1, sort_keys=True)
raw = sorted((int(k.rsplit("_k", 1)[1]), v) for k, v in keep.items() if k.startswith("instability_k"))
print(f"run {r.info.run_id} {r.info.status}: barrier by k " + ", ".join(f"{k}: {v:.3f}" for k, v in raw)
      + f"; lmc_onset_epoch {keep.get('lmc_onset_epoch', 'none')}")
EOF
)
    tar -cf "$OUT/instability.tar" -C "$WORK" instability
    row "5. instability sweep (mlflow run -e instability, $INSTAB_EPOCHS epochs)" "$(status_of $rc)" \
      "$(( $(now) - t ))" "$(echo "$res" | tr '\n' ' ')"
  fi
fi

failed=$(grep -cE '\| (failed|timed out)' "$ROWS")
echo "== done in $(( $(now) - T0 )) s; $failed step(s) failed or timed out"
[ "${DEVICE%%:*}" = cuda ] || note "a dry run on the CPU (DEVICE=$DEVICE): nothing here ran on a GPU"
write_summary
cat "$OUT/summary.md"
rm -rf "$WORK"
[ "$failed" = 0 ]
