#!/usr/bin/env bash
# The DeepCluster loop with plain sbatch dependencies, for those who prefer scripts to
# `python -m dcssl.launch train RUN_DIR --executor slurm` (which does the same through submitit).
#
#   slurm/pipeline.sh RUN_DIR EPOCHS [SLIDES]
#
# With SLIDES (a folder, a glob or a GDC manifest) the chain starts with the tiling array.
# Chain: [tile array →] train 0 (bootstrap features) → cluster 0 → train 1 → cluster 1 → …
# Every job skips work that is already done, so re-running this script after a failure or a
# cancellation finishes the run without redoing finished epochs. Resources (partition, GPUs,
# nodes, ranks) are in the #SBATCH lines of tile.sbatch, train.sbatch and cluster.sbatch; override
# them with SBATCH_* environment variables (e.g. SBATCH_PARTITION=gpu) or edit copies.
set -euo pipefail

usage() { echo "usage: $0 RUN_DIR EPOCHS [SLIDES]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
run_dir=$1
epochs=$2
slides=${3:-}
[[ $epochs =~ ^[0-9]+$ ]] || { echo "error: EPOCHS must be a number, got '$epochs'" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p -- "$run_dir/logs/sbatch"
# Hold the run lock while submitting (a run in use: one line naming its holder, exit 2); the job
# ids written to $DCSSL_RUN_JOBS then keep the run between the chain's jobs (see dcssl/runlock.py).
if [[ -z ${DCSSL_RUN_JOBS:-} ]]; then
  exec "${PYTHON:-python3}" -m dcssl.holdrun "$run_dir" --what "slurm/pipeline.sh" -- bash "$0" "$@"
fi

previous=""
submit() {  # submit SCRIPT ARGS… after the previous job; arguments reach the script unexpanded
  local dependency=()
  [[ -n $previous ]] && dependency=(--dependency="afterok:$previous")
  previous=$(sbatch --parsable "${dependency[@]}" --chdir="$PWD" \
    --output="$run_dir/logs/sbatch/%x-%j.out" "$@")
  previous=${previous%%;*}
  echo "$previous" >>"$DCSSL_RUN_JOBS"
  echo "submitted $(basename "$1") ${*:2} as job $previous" >&2
}

if [[ -n $slides ]]; then
  python -m dcssl.launch tile "$run_dir" --slides "$slides" --executor slurm --wait
fi
for ((epoch = 0; epoch <= epochs; epoch++)); do
  submit "$here/train.sbatch" "$run_dir" "$epoch"
  submit "$here/cluster.sbatch" "$run_dir" "$epoch"
done
echo "$previous"
