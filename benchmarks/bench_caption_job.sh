#!/bin/bash
# The bulk captioning job (`mvclam caption --db … --table …`, transformers backend, one actor) with
# and without references, side by side with farm-bench (A/B interleaved; issue 20). Both use the
# shipped captioner's weights; "without" is a copy of the checkpoint whose captioner config cites
# no references (the `--prompt references=0` ablation of the evaluation job). Each run starts from
# the same uncaptioned table and captions its first N molecules. Run on an idle machine.
#   N=32 RUNS=3 [M=checkpoint] bash benchmarks/bench_caption_job.sh
# VS=actors compares instead one caption actor (the default) with `--actors 2`, both with references.
set -eu
cd "$(dirname "$0")/.." && . .venv/bin/activate
N=${N:-32}
RUNS=${RUNS:-3}
W=${W:-/tmp/mvclam-caption-bench}
M=${M:-checkpoints/mvclam-small-chebi}
rm -rf "$W" && mkdir -p "$W"
mvclam embed data/sample_catalog.csv --db "$W/db0" --table molecules > "$W/embed.log" 2>&1
cp -r "$M" "$W/no-references"
python - "$W/no-references/captioner/config.json" <<'PY'
import json, sys
path = sys.argv[1]
manifest = json.load(open(path))
manifest["config"]["references"] = 0
json.dump(manifest, open(path, "w"), indent=1)
PY
VS=${VS:-references}
job() {  # $1: checkpoint, $2: log file, $3: extra flags
  echo "sh -c 'rm -rf $W/db && cp -r $W/db0 $W/db && exec mvclam caption --db $W/db --table molecules --model $1 --limit $N $3 --json >>$2 2>&1'"
}
A=$(job "$M" "$W/with.log" "")
if [ "$VS" = actors ]; then
  B=$(job "$M" "$W/without.log" "--actors 2")  # "without" here: two actors, with references
else
  B=$(job "$W/no-references" "$W/without.log" "")
fi
eval farm-bench -n "$RUNS" --warmup 1 --timeout 3000 --vs "\"$B\"" -- $A
python - "$W" "$VS" <<'PY'
import json, sys
from pathlib import Path
labels = {"with": "one actor", "without": "two actors"} if sys.argv[2] == "actors" else {}
for name in ("with", "without"):
    text = Path(sys.argv[1], f"{name}.log").read_text()
    summaries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    print(labels.get(name, f"{name} references") + ":", [{k: s[k] for k in s if k.endswith("_s") or "tokens" in k or k in ("captioned", "failed")} for s in summaries])
PY
