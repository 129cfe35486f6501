#!/usr/bin/env bash
# One GPU session, time-boxed: continue training the bundled Fashion-MNIST GHN and, at the same
# time, train the 50 held-out architectures with SGD (the ground truth of `rank-ghn`).
#
#   bench/gpu_ghn_run.sh OUT_DIR DATA_DIR [BUDGET_SECONDS]
#
# How the bundled checkpoint's later steps and bench/results/ranking-fashion-mnist were made: the
# machine had one H100 and 16 cores, and no network, so Fashion-MNIST came along in DATA_DIR.
# Ground truth: `rank-ghn --truth-only` in SHARDS processes sharing one cache file (architecture i
# goes to shard i % SHARDS). GHN: `train-ghn --init-from` the bundled checkpoint, with as many
# steps as fit the budget at the speed measured by a 40-step calibration run on the loaded GPU.
# Everything lands in OUT_DIR (run/ holds a resumable train-ghn run), whatever stops it.
set -uo pipefail

OUT_DIR=${1:?usage: $0 OUT_DIR DATA_DIR [BUDGET_SECONDS]}
DATA_DIR=${2:?usage: $0 OUT_DIR DATA_DIR [BUDGET_SECONDS]}
BUDGET=${3:-520}
SHARDS=${SHARDS:-6}
PY=${PYTHON:-python3}
BUNDLED=nas_service/assets/ghn-fashion-mnist.safetensors
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

mkdir -p "$OUT_DIR"
$PY -c "import torch, torch_geometric; print('torch', torch.__version__, 'pyg',
torch_geometric.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1

# Ground truth: 5 epochs of SGD, scored on the test split, then the 1-epoch SGD baseline on the
# first 2000 validation images (the protocol of `rank-ghn --eval-images 2000`).
for ((k = 0; k < SHARDS; k++)); do
  timeout $((BUDGET + 20)) $PY -m nas_service rank-ghn --truth-only --shard "$k/$SHARDS" \
    --data-root "$DATA_DIR" --held-out 50 --eval-images 2000 \
    --cache "$OUT_DIR/ground-truth.json" --out /tmp/rank >"/tmp/truth-$k.log" 2>&1 &
done

# Calibration: 40 steps on the GPU as loaded as it will be, then the real run.
rm -rf /tmp/calibrate
timeout 120 $PY -m nas_service train-ghn --out /tmp/calibrate --init-from "$BUNDLED" \
  --data-root "$DATA_DIR" --steps 1540 --log-every 10 --no-progress >/tmp/calibrate.log 2>&1
SPS=$($PY -c "import json; r=[json.loads(l) for l in open('/tmp/calibrate/log.jsonl')];
s=[x['seconds_per_step'] for x in r if 'seconds_per_step' in x][1:]; print(sum(s)/len(s))") \
  || { cat /tmp/calibrate.log; exit 1; }
LEFT=$((BUDGET - $(elapsed) - 45))  # validation, checkpoints, start-up
STEPS=$($PY -c "print(1500 + max(50, int($LEFT / $SPS)))")
echo "calibration: $SPS s/step at $(elapsed) s; training to step $STEPS"

timeout $((BUDGET - $(elapsed) + 15)) $PY -m nas_service train-ghn --out "$OUT_DIR/run" \
  --init-from "$BUNDLED" --data-root "$DATA_DIR" --steps "$STEPS" --no-progress \
  >/tmp/train.log 2>&1
echo "train-ghn exit $? at $(elapsed) s"; tail -n 3 /tmp/train.log

wait
echo "ground truth done at $(elapsed) s"
for ((k = 0; k < SHARDS; k++)); do tail -n 1 "/tmp/truth-$k.log"; done
$PY -c "import json; print(len(json.load(open('$OUT_DIR/ground-truth.json'))), 'cached results')"
