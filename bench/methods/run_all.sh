#!/usr/bin/env bash
# Runs every pFL method of issue 20 on bench/methods/base.toml, 3 seeds each (--repeats),
# one folder per method under $OUT (default runs/methods); then
#   python bench/methods_table.py runs/methods
# prints the table of bench/README.md, "pFL methods on the EMNIST sample (issue 20)".
# From the repository root, the EMNIST sample beside it:
#   bash bench/methods/run_all.sh [method ...]     # default: all, in the order below
# TASK=shakespeare runs bench/methods/shakespeare.toml instead (the Shakespeare sample beside
# the repository; OUT defaults to runs/methods-shakespeare), the table of "pFL methods on
# the Shakespeare sample (issue 20)".
# REPEATS (default 3), FEDP13N (default: fedp13n on PATH) and FLAGS (more flags for every
# run, e.g. FLAGS="--executor in-process" to run two queues side by side) are read from the
# environment.
# A method's settings beyond --method are each method's documented defaults (README.md).
set -euo pipefail
TASK=${TASK:-emnist}
case "$TASK" in
  emnist) CONFIG=bench/methods/base.toml; OUT=${OUT:-runs/methods} ;;
  shakespeare) CONFIG=bench/methods/shakespeare.toml; OUT=${OUT:-runs/methods-shakespeare} ;;
  *) echo "TASK must be emnist or shakespeare, not '$TASK'" >&2; exit 2 ;;
esac
REPEATS=${REPEATS:-3}
FEDP13N=${FEDP13N:-fedp13n}
FLAGS=${FLAGS:-}
flags() {
  case "$1" in
    fedavg) echo "" ;;
    fedprox) echo "--proximal-mu 0.01" ;;
    fedbn) [ "$TASK" = emnist ] && echo "--method fedbn --model conv_bn" \
      || echo "--method fedbn --model shakespeare_rnn_bn" ;;
    # Personalized FedAvg (Jiang et al. 2019, bench/paper/pfedavg.toml's schedule): FedAvg,
    # then Reptile (K = 10 steps, server Adam 0.001), about the same example-steps.
    # On Shakespeare: bench/paper/shakespeare_pfedavg.toml's schedule (FedAvg(E=2) for 2
    # rounds, then 7 Reptile rounds), ~7,000 example-steps as the others.
    pfedavg) [ "$TASK" = shakespeare ] && echo "--stage fedavg:rounds=2,local_epochs=2,clients_per_round=10,server_momentum=0" \
      "--stage reptile:rounds=7,local_epochs=10,local_steps=10,clients_per_round=10" \
      ",server_optimizer=adam,server_learning_rate=0.001" | sed 's/ ,/,/' && return
      echo "--stage fedavg:rounds=20,local_epochs=1,clients_per_round=10,server_momentum=0" \
      "--stage reptile:rounds=7,local_epochs=10,local_steps=10,clients_per_round=10" \
      ",server_optimizer=adam,server_learning_rate=0.001" | sed 's/ ,/,/' ;;
    # FedRep: FL-bench's 4 head epochs (its default 4 + 1) rather than the paper's 10, so its
    # local work per round stays near the others'.
    fedrep) echo "--method fedrep --head-epochs 4" ;;
    # pFedMe on Shakespeare: TFF's client rate 1 times pFedMe's lambda 15 makes its local
    # models diverge (the run warns; fedp13n.algorithms.pfedme.unstable_note): both rates
    # at 0.1, so eta x lambda = 1.5 as on EMNIST (client lr 0.1 there).
    pfedme) [ "$TASK" = shakespeare ] \
      && echo "--method pfedme --client-lr 0.1 --pfedme-personal-lr 0.1" \
      || echo "--method pfedme" ;;
    *) echo "--method $1" ;;
  esac
}
ALL="fedavg pfedavg fedprox fedper fedrep lg_fedavg ditto scaffold per_fedavg pfedme fedbn apfl"
for m in ${@:-$ALL}; do
  start=$(date +%s)
  # shellcheck disable=SC2046
  $FEDP13N run --config "$CONFIG" $(flags "$m") --output-dir "$OUT/$m" \
    --repeats "$REPEATS" --no-progress --no-report $FLAGS
  # cumulative over passes (REPEATS=1, then REPEATS=3 FLAGS=--resume adds the other seeds)
  before=$(cat "$OUT/$m/wall_seconds.txt" 2>/dev/null || echo 0)
  echo "$((before + $(date +%s) - start))" > "$OUT/$m/wall_seconds.txt"
done
