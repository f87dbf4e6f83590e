#!/usr/bin/env bash
# Runs every pFL method of issue 20 on bench/methods/base.toml, 3 seeds each (--repeats),
# one folder per method under $OUT (default runs/methods); then
#   python bench/methods_table.py runs/methods
# prints the table of bench/README.md, "pFL methods on the EMNIST sample (issue 20)".
# From the repository root, the EMNIST sample beside it:
#   bash bench/methods/run_all.sh [method ...]     # default: all, in the order below
# REPEATS (default 3), FEDP13N (default: fedp13n on PATH) and FLAGS (more flags for every
# run, e.g. FLAGS="--executor in-process" to run two queues side by side) are read from the
# environment.
# A method's settings beyond --method are each method's documented defaults (README.md).
set -euo pipefail
OUT=${OUT:-runs/methods}
REPEATS=${REPEATS:-3}
FEDP13N=${FEDP13N:-fedp13n}
FLAGS=${FLAGS:-}
flags() {
  case "$1" in
    fedavg) echo "" ;;
    fedprox) echo "--proximal-mu 0.01" ;;
    fedbn) echo "--method fedbn --model dnn_bn" ;;
    # Personalized FedAvg (Jiang et al. 2019, bench/paper/pfedavg.toml's schedule): FedAvg,
    # then Reptile (K = 10 steps, server Adam 0.001), the same ~82,000 example-steps.
    pfedavg) echo "--stage fedavg:rounds=18,local_epochs=2,clients_per_round=10,server_momentum=0" \
      "--stage reptile:rounds=16,local_epochs=10,local_steps=10,clients_per_round=10" \
      ",server_optimizer=adam,server_learning_rate=0.001" | sed 's/ ,/,/' ;;
    *) echo "--method $1" ;;
  esac
}
ALL="fedavg pfedavg fedprox fedper fedrep lg_fedavg ditto scaffold per_fedavg pfedme fedbn apfl"
for m in ${@:-$ALL}; do
  start=$(date +%s)
  # shellcheck disable=SC2046
  $FEDP13N run --config bench/methods/base.toml $(flags "$m") --output-dir "$OUT/$m" \
    --repeats "$REPEATS" --no-progress --no-report $FLAGS
  echo "$(($(date +%s) - start))" > "$OUT/$m/wall_seconds.txt"
done
