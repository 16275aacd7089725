#!/usr/bin/env bash
# Submit a manifest as SHARDS array tasks plus a dependent merge job:
#   SHARDS=8 MANIFEST=experiments/paper/w4a4.json deploy/slurm/submit.sh
set -euo pipefail
here=$(dirname "$0")
SHARDS=${SHARDS:-8}
export MANIFEST=${MANIFEST:-experiments/paper/w4a4.json}
jid=$(sbatch --parsable --export=ALL --array=0-$((SHARDS - 1)) "$here/bench-array.sbatch")
sbatch --export=ALL --dependency=afterany:"$jid" "$here/merge.sbatch"
echo "array job $jid ($SHARDS shards of $MANIFEST), merge queued after it"
