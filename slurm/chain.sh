#!/usr/bin/env bash
# Submit a long schedule as a chain of N Slurm jobs, each starting when the previous one has
# ended, whatever its end (--dependency=afterany): every job resumes the run from its latest
# checkpoint, stops cleanly before its time limit (USR1 from --signal=B:USR1@grace, or
# run.time_budget_s / run.steps_per_job) and leaves the rest to the next. Jobs that start after
# the schedule is done find run_dir/FINISHED and exit at once.
#
#   slurm/chain.sh N [sbatch options...] SCRIPT.sbatch [recipe overrides...]
#   slurm/chain.sh 10 -p gpu -A proj --gpus-per-node=8 --time=24:00:00 slurm/train.sbatch \
#       data.path=/data/imagenet run.epochs=1200 run.dir=runs/a1_r50
#
# SCRIPT is the first argument ending in .sbatch, or the one after `--`. All jobs get the same
# sbatch options and overrides, hence the same run folder (give run.dir=..., or a --job-name:
# train.sbatch's default run folder is runs/<job name>). Prints one job id a line. Cancel the
# rest of a chain with `scancel --name=<job name>` (or the printed ids).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
N=$1; shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "chain.sh: N must be a positive number, got '$N'" >&2; usage; }

SBATCH_OPTS=()
SCRIPT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; SCRIPT=${1:-}; shift || true; break ;;
    *.sbatch) SCRIPT=$1; shift; break ;;
    *) SBATCH_OPTS+=("$1"); shift ;;
  esac
done
if [ -z "$SCRIPT" ] || [ ! -f "$SCRIPT" ]; then
  echo "chain.sh: no batch script given (or not found): '$SCRIPT'" >&2
  usage
fi

previous=""
for _ in $(seq 1 "$N"); do
  dependency=()
  [ -n "$previous" ] && dependency=("--dependency=afterany:$previous")
  id=$(sbatch --parsable "${dependency[@]}" "${SBATCH_OPTS[@]}" "$SCRIPT" "$@")
  id=${id%%;*}  # "id;cluster" on multi-cluster sites
  echo "$id"
  previous=$id
done
