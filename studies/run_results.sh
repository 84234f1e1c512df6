#!/usr/bin/env bash
# Re-runs every study on the shipped toy-llava for docs/results.md, at tau 20 (the model's default) and at
# its registered visual-sink threshold (`--tau visual`, 16; sinklens.models.sink_dims). POPE-scored
# studies: the random split, n = 300 per setting, batch 8, rows shared (and resumed) in docs/results/pope_runs.
# Two lanes run side by side; each step resumes where it stopped, so the script can be re-run after a kill.
#   OMP_NUM_THREADS=1 nice -n 10 bash studies/run_results.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
R=docs/results
RUNS=$R/pope_runs
N=${POPE_N:-300}
POPE="--split random --n $N --batch-size 8 --runs $RUNS"  # fig3b
TABLE="--splits random --n $N --batch-size 8 --runs $RUNS"  # table_var
mkdir -p out/results-logs

# What produced docs/results/ in this session (each step resumes, and reuses the rows of earlier steps:
# the same setting on the same questions is one folder under $RUNS).
lane_var() {  # one threshold per lane: $1 is 20 or visual (16)
  local tau=$1 out=$R/tau$([ "$1" = visual ] && echo 16 || echo 20)
  # baseline and VAR as the paper specifies it, then VAR's ablations (released convention, all heads,
  # destinations), then the rho x p grid in both conventions; each pass reuses the rows of the one before
  $PY studies/table_var.py --tau $tau --settings method --no-grid $TABLE --out $out
  $PY studies/table_var.py --tau $tau --settings all --no-grid $TABLE --out $out
  $PY studies/table_var.py --tau $tau --settings all --grid $TABLE --out $out
  # POPE's other two splits: the baseline and VAR as the paper specifies it
  $PY studies/table_var.py --tau $tau --settings method --no-grid ${TABLE/--splits random/--splits popular adversarial} \
    --out ${out}_splits
}

lane_maps() {
  for tau in visual 20; do
    out=$R/tau$([ $tau = visual ] && echo 16 || echo 20)
    for s in sink_frequency_by_layer fig1_attention_maps fig2_sink_dimensions fig3a_phi_vs_attention \
             fig3c_contribution fig3d_maps_without_sinks fig4_head_ranking; do
      $PY studies/$s.py --tau $tau --batch-size 8 --out $out
    done
  done
  $PY studies/fig3b_sink_ablation.py --tau visual --seeds 3 $POPE --out $R/tau16
  $PY studies/fig3b_sink_ablation.py --tau 20 --seeds 1 $POPE --out $R/tau20
}

lane_var visual > out/results-logs/lane_var16.log 2>&1 &
lane_var 20 > out/results-logs/lane_var20.log 2>&1 &
wait
lane_maps > out/results-logs/lane_maps.log 2>&1
