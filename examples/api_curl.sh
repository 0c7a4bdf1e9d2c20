#!/usr/bin/env bash
# API-triggered runs with curl: get a JWT, trigger ingest with conf, follow runs, approve a pending
# promotion, roll the champion back. Needs bash, curl and python3 (only to read JSON; no jq needed).
#
#   export AIRFLOW_URL=http://localhost:8080 AIRFLOW_USERNAME=admin AIRFLOW_PASSWORD=...
#   examples/api_curl.sh walkthrough 2026-01-07      # every step below, in order
#   examples/api_curl.sh --dataset diabetes walkthrough 2026-01-07   # another data set's DAGs
#
# Each data set of the deployment has its own DAGs, named <dataset>__<kind> (churn__ingest, churn__train,
# churn__rollback, ...). --dataset NAME (first, before the step; default $MLOPS_DATASET, else churn) picks the
# data set; a DAG argument may be a kind (ingest, train, monitor, rollback, backfill, registry_watch: that
# data set's DAG) or a full DAG id (churn__train, audit_verify).
#
# Steps (each can be copied on its own; results go to stdout, progress to stderr):
#   token                          print a JWT (export AIRFLOW_TOKEN=$(... token) to reuse it)
#   unpause DAG...                 unpause DAGs that are paused (runs of paused DAGs stay queued)
#   trigger-ingest DATE            trigger `<dataset>__ingest` with conf {"date": DATE}; print the run id
#   wait DAG RUN                   follow a run, printing run and task state changes; exit 1 unless success
#   train-run INGEST_RUN           print the `<dataset>__train` run that the ingest run's
#                                  mlops.<dataset>.validated_data event started
#   approve RUN                    wait until train RUN's `approve` task awaits input, show the gate numbers,
#                                  approve; exit 3 if the gate rejected the model (nothing to approve)
#   trigger-train END_DATE [WHY]   trigger `<dataset>__train` for a window ending END_DATE; with WHY:
#                                  force=true and WHY as the justification (the gate's verdict is overridden,
#                                  recorded, and a human still approves)
#   rollback REASON [VERSION]      trigger `<dataset>__rollback` (champion -> `previous`, or VERSION); print
#                                  the run id
#   walkthrough DATE               unpause, trigger-ingest, wait, train-run, approve (if the gate rejects:
#                                  trigger-train DATE WHY, approve as the second person), wait, rollback, wait
#
# Four eyes: a forced promotion must be approved by a different user from the one who triggered it; Airflow
# refuses the triggering user's approval (403). `approve` answers as AIRFLOW_USERNAME (run it as the second
# person); the walkthrough approves its forced run as AIRFLOW_APPROVER_USERNAME / AIRFLOW_APPROVER_PASSWORD.
#
# Environment: AIRFLOW_URL (default http://localhost:8080), AIRFLOW_USERNAME and AIRFLOW_PASSWORD (for the
# token), or AIRFLOW_TOKEN (a JWT; then no password is needed); AIRFLOW_APPROVER_USERNAME and
# AIRFLOW_APPROVER_PASSWORD (the second person, for the walkthrough's forced promotion); MLOPS_DATASET (the
# default of --dataset: churn); WAIT_TIMEOUT seconds per wait (1800), POLL_SECONDS (3), REPEAT_ANSWER_DELAY
# (5: the pause before answering a repeated question).
set -euo pipefail

AIRFLOW_URL=${AIRFLOW_URL:-http://localhost:8080}
AIRFLOW_URL=${AIRFLOW_URL%/}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-1800}
POLL_SECONDS=${POLL_SECONDS:-3}
REPEAT_ANSWER_DELAY=${REPEAT_ANSWER_DELAY:-5}  # pause before answering a repeated approval question
DATASET=${MLOPS_DATASET:-churn}  # the data set whose DAGs the steps use (--dataset NAME)

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# jget KEY...: one field of the JSON document on stdin (list indexes are numbers); "" for null
jget() {
  python3 -c 'import json, sys
try:
    v = json.load(sys.stdin)
except ValueError:
    sys.exit(1)  # no JSON: the request failed and said why on stderr
for k in sys.argv[1:]:
    v = v[int(k)] if isinstance(v, list) else (v or {}).get(k)
print("" if v is None else v if isinstance(v, str) else json.dumps(v))' "$@"
}

# urlq TEXT: TEXT percent-encoded for a URL path (run ids contain ':' and '+')
urlq() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

# get_token [PREFIX]: POST /auth/token with $PREFIX_USERNAME / $PREFIX_PASSWORD (PREFIX: AIRFLOW, or
# AIRFLOW_APPROVER for the second person); prints the JWT
get_token() {
  local who=${1:-AIRFLOW} user pass
  user="${who}_USERNAME" pass="${who}_PASSWORD"
  [[ -n "${!user:-}" && -n "${!pass:-}" ]] ||
    die "set ${who}_USERNAME and ${who}_PASSWORD$([[ $who == AIRFLOW ]] && echo ' (or AIRFLOW_TOKEN)') to call $AIRFLOW_URL"
  local body
  body=$(WHO=$who python3 -c 'import json, os
w = os.environ["WHO"]
print(json.dumps({"username": os.environ[w + "_USERNAME"], "password": os.environ[w + "_PASSWORD"]}))')
  local out
  out=$(curl -sS --fail-with-body -X POST "$AIRFLOW_URL/auth/token" -H 'Content-Type: application/json' \
    -d "$body") || die "no token from $AIRFLOW_URL/auth/token (wrong URL, username or password?)${out:+: $out}"
  jget access_token <<<"$out"
}

# api METHOD PATH [JSON]: one authenticated REST call; prints the response body, fails on HTTP errors
api() {
  local out
  if ! out=$(curl -sS --fail-with-body -X "$1" "$AIRFLOW_URL$2" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' ${3:+-d "$3"}); then
    die "$1 $2 failed: ${out:-no response from $AIRFLOW_URL}"
  fi
  printf '%s\n' "$out"
}

# dag KIND_OR_ID: the data set's DAG id of a kind (train -> churn__train); any other name as it is
dag() {
  case $1 in
    ingest | train | monitor | rollback | backfill | registry_watch) echo "${DATASET}__$1" ;;
    *) echo "$1" ;;
  esac
}

cmd_token() { get_token; }

cmd_unpause() {
  local dag
  for dag in "$@"; do
    dag=$(dag "$dag")
    if [[ $(api GET "/api/v2/dags/$dag" | jget is_paused) == true ]]; then
      api PATCH "/api/v2/dags/$dag" '{"is_paused": false}' >/dev/null
      say "unpaused $dag"
    fi
  done
}

# json_obj KEY=TEXT... KEY:=JSON...: a JSON object (httpie's notation: `=` a string, `:=` a JSON value)
json_obj() {
  python3 -c 'import json, sys
obj = {}
for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    if key.endswith(":"):
        obj[key[:-1]] = json.loads(value)
    else:
        obj[key] = value
print(json.dumps(obj))' "$@"
}

# trigger DAG CONF_JSON: POST a run (logical_date is required by the API and may be null); print its id
trigger() {
  local run
  run=$(api POST "/api/v2/dags/$1/dagRuns" "{\"logical_date\": null, \"conf\": $2}" | jget dag_run_id)
  say "triggered $1 with conf $2: run $run"
  echo "$run"
}

cmd_trigger_ingest() { trigger "$(dag ingest)" "$(json_obj date="$1")"; }

cmd_trigger_train() {
  if (($# > 1)); then
    trigger "$(dag train)" "$(json_obj end_date="$1" force:=true justification="$2")"
  else
    trigger "$(dag train)" "$(json_obj end_date="$1")"
  fi
}

cmd_rollback() { trigger "$(dag rollback)" "$(json_obj reason="$1" ${2:+to_version="$2"})"; }

# task_states DAG RUN: "task_id[map_index] state" lines of the run's task instances
task_states() {
  api GET "/api/v2/dags/$1/dagRuns/$(urlq "$2")/taskInstances?limit=100" | python3 -c 'import json, sys
for t in sorted(json.load(sys.stdin)["task_instances"], key=lambda t: (t["start_date"] or "~", t["task_id"], t["map_index"])):
    name = t["task_id"] + ("[%d]" % t["map_index"] if t["map_index"] >= 0 else "")
    print(name, t["state"] or "(no state)")'
}

cmd_wait() {
  local dag run=$2 state="" last="" tasks="" seen="" deadline=$((SECONDS + WAIT_TIMEOUT))
  dag=$(dag "$1")
  while true; do
    state=$(api GET "/api/v2/dags/$dag/dagRuns/$(urlq "$run")" | jget state)
    if [[ $state != "$last" ]]; then
      say "$dag $run: ${last:-(new)} -> $state"
      last=$state
    fi
    tasks=$(task_states "$dag" "$run")
    # print the task lines that changed since the last poll
    comm -13 <(printf '%s\n' "$seen" | sort) <(printf '%s\n' "$tasks" | sort) | while read -r line; do
      [[ -n $line ]] && say "  $dag.$line"
    done
    seen=$tasks
    case $state in
      success) return 0 ;;
      failed) die "$dag run $run failed; see its task logs in the Airflow UI ($AIRFLOW_URL)" ;;
    esac
    ((SECONDS < deadline)) || die "$dag run $run still $state after ${WAIT_TIMEOUT}s"
    sleep "$POLL_SECONDS"
  done
}

cmd_train_run() {
  local ingest_run=$1 deadline=$((SECONDS + WAIT_TIMEOUT)) run="" ingest train
  ingest=$(dag ingest) train=$(dag train)
  while true; do
    # the asset event the ingest run emitted lists the runs it started (created_dagruns). Airflow 3.3
    # answers 500 here while such a run is queued without a start_date: that is "not yet", ask again.
    run=$(curl -sS "$AIRFLOW_URL/api/v2/assets/events?source_dag_id=$(urlq "$ingest")&source_run_id=$(urlq "$ingest_run")" \
      -H "Authorization: Bearer $TOKEN" -w '\n%{http_code}' | TRAIN=$train python3 -c 'import json, os, sys
*body, code = sys.stdin.read().rsplit("\n", 1)
if code.startswith("5"):
    print("")
elif code != "200":
    sys.exit("GET /api/v2/assets/events failed: HTTP " + code + " " + "".join(body)[:300])
else:
    runs = [r["run_id"] for e in json.loads("".join(body))["asset_events"] for r in e["created_dagruns"] if r["dag_id"] == os.environ["TRAIN"]]
    print(runs[0] if runs else "")') || die "cannot read the asset events of $ingest $ingest_run"
    if [[ -n $run ]]; then
      say "$ingest $ingest_run started $train run $run"
      echo "$run"
      return 0
    fi
    ((SECONDS < deadline)) || die "no $train run started by $ingest $ingest_run after ${WAIT_TIMEOUT}s (is $train paused?)"
    sleep "$POLL_SECONDS"
  done
}

# gate_numbers RUN: the registered version with its holdout metrics, and the gate's verdict from the log
gate_numbers() {
  local base="/api/v2/dags/$(dag train)/dagRuns/$(urlq "$1")/taskInstances" try
  api GET "$base/register_best/xcomEntries/return_value" | python3 -c 'import json, sys
best = json.load(sys.stdin)["value"]
best = json.loads(best) if isinstance(best, str) else best
metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(best["metrics"].items()) if k != "fit_seconds")
print("  candidate {} -> version {}: {}".format(best["candidate"], best["version"], metrics))' >&2
  try=$(api GET "$base/evaluate_gate" | jget try_number)
  api GET "$base/evaluate_gate/logs/$try" | python3 -c 'import json, sys
for line in json.load(sys.stdin)["content"]:
    text = line.get("event", "") if isinstance(line, dict) else str(line)
    if "gate evaluation" in text or "gate decision" in text:
        print("  " + text)' >&2
}

# Returns once the approval task got past the question. Airflow 3.3 can fail the resumed attempt when the
# answer arrives within about a second of the question (before the scheduler has handled the pausing
# attempt's exit); the task's retry then asks again, and this answers once more (after REPEAT_ANSWER_DELAY).
cmd_approve() {
  local run=$1 ti state try answered="" deadline=$((SECONDS + WAIT_TIMEOUT)) base train
  train=$(dag train)
  base="/api/v2/dags/$train/dagRuns/$(urlq "$run")/taskInstances"
  while true; do
    ti=$(curl -sS -X GET "$AIRFLOW_URL$base/approve" -H "Authorization: Bearer $TOKEN")  # 404: not created yet
    state=$(jget state <<<"$ti" || true)
    try=$(jget try_number <<<"$ti" || true)
    [[ $state == success && -n $answered ]] && return 0
    if [[ $state == awaiting_input && $try != "$answered" ]]; then
      if [[ -z $answered ]]; then
        say "$train $run awaits approval:"
        gate_numbers "$run" || say "(gate numbers not available)"
      else
        say "$train $run: Airflow asked again on try $try (try $answered failed after the answer); approving again in ${REPEAT_ANSWER_DELAY} s"
        sleep "$REPEAT_ANSWER_DELAY"  # answering the repeat at once can meet the same race again
      fi
      api PATCH "$base/approve/-1/hitlDetails" '{"chosen_options": ["Approve"], "params_input": {}}' |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
print("  chosen {} by {}".format(d["chosen_options"], (d.get("responded_by") or {}).get("name", "?")))' >&2
      say "approved promotion in $train run $run"
      answered=$try
    fi
    if [[ -z $answered && ($state == skipped || $state == removed) ]]; then
      say "$train $run did not ask for approval (approve: $state): the gate rejected the model"
      gate_numbers "$run" || true
      return 3
    fi
    if [[ $(api GET "/api/v2/dags/$train/dagRuns/$(urlq "$run")" | jget state) == failed ]]; then
      die "$train run $run failed $([[ -n $answered ]] && echo after || echo before) its approval step"
    fi
    ((SECONDS < deadline)) || die "$train $run: approve still ${state:-not created} after ${WAIT_TIMEOUT}s"
    sleep "$POLL_SECONDS"
  done
}

# decision DAG RUN TASK KEY: print what a promote/rollback task recorded (verdict, versions)
decision() {
  api GET "/api/v2/dags/$(dag "$1")/dagRuns/$(urlq "$2")/taskInstances/$3/xcomEntries/$4" | python3 -c 'import json, sys
d = json.load(sys.stdin)["value"]
d = json.loads(d) if isinstance(d, str) else d
print("{}: {} -> champion version {} (before: {}); {}".format(
    d["model_name"], d["verdict"], d["challenger"]["version"], d.get("previous_champion"), d["reason"]))'
}

cmd_walkthrough() {
  local date=$1 ingest train rollback rc=0
  cmd_unpause ingest train rollback
  ingest=$(cmd_trigger_ingest "$date")
  echo "ingest run: $ingest"
  cmd_wait ingest "$ingest"
  train=$(cmd_train_run "$ingest")
  echo "train run: $train"
  cmd_approve "$train" || rc=$?
  if ((rc == 3)); then
    cmd_wait train "$train"
    train=$(cmd_trigger_train "$date" "API walkthrough: promote the $DATASET model trained up to $date for a rollback drill")
    echo "train run (forced): $train"
    local second
    second=$(get_token AIRFLOW_APPROVER) || exit 1
    TOKEN=$second cmd_approve "$train"  # four eyes: the second person approves the forced run
  elif ((rc != 0)); then
    exit "$rc"
  fi
  echo "approved: $train"
  cmd_wait train "$train"
  echo "promotion: $(decision train "$train" promote decision)"
  rollback=$(cmd_rollback "API walkthrough: roll back the promotion of $date")
  echo "rollback run: $rollback"
  cmd_wait rollback "$rollback"
  echo "rollback: $(decision rollback "$rollback" roll_back return_value)"
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

main() {
  while [[ ${1:-} == --dataset || ${1:-} == --dataset=* ]]; do
    if [[ $1 == --dataset=* ]]; then
      DATASET=${1#--dataset=}
      shift
    else
      (($# >= 2)) || usage
      DATASET=$2
      shift 2
    fi
  done
  [[ -n $DATASET ]] || usage
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    token) (($# == 0)) || usage; cmd_token; return ;;
    unpause) (($# >= 1)) || usage ;;
    trigger-ingest | train-run | approve | walkthrough) (($# == 1)) || usage ;;
    wait) (($# == 2)) || usage ;;
    trigger-train | rollback) (($# == 1 || $# == 2)) || usage ;;
    *) usage ;;
  esac
  TOKEN=${AIRFLOW_TOKEN:-$(get_token)}
  "cmd_${cmd//-/_}" "$@"
}

main "$@"
