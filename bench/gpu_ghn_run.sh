#!/usr/bin/env bash
# One GPU session, time-boxed: continue training the bundled Fashion-MNIST GHN and, at the same
# time, train the 50 held-out architectures with SGD (the ground truth of `rank-ghn`).
#
#   bench/gpu_ghn_run.sh OUT_DIR DATA_DIR [BUDGET_SECONDS]
#
# How the bundled checkpoint's later steps and bench/results/ranking-fashion-mnist were made: the
# machine had one H100 and 16 cores, and no network, so Fashion-MNIST came along in DATA_DIR.
# GPU step timing: bench/ghn_training_bench.py on the GPU, part by part, with the list of what
# makes the host wait for the device (OUT_DIR/ghn_training_bench.json; BENCH=0 skips it).
# Ground truth: `rank-ghn --truth-only` in SHARDS processes sharing one cache file (architecture i
# goes to shard i % SHARDS, on GPU i % GPUS; SHARDS=0 skips it). GHN: `train-ghn --init-from` the
# bundled checkpoint, with as many steps as fit the budget at the speed measured by a 40-step
# calibration run on the loaded GPUs. With several GPUs, train-ghn runs under torchrun, one
# process per GPU, each on its share of every meta-batch (docs/ghn.md); with one, as one process.
# Everything lands in OUT_DIR (run/ holds a resumable train-ghn run), whatever stops it.
set -uo pipefail

OUT_DIR=${1:?usage: $0 OUT_DIR DATA_DIR [BUDGET_SECONDS]}
DATA_DIR=${2:?usage: $0 OUT_DIR DATA_DIR [BUDGET_SECONDS]}
BUDGET=${3:-520}
SHARDS=${SHARDS:-6}
BENCH=${BENCH:-1}
PY=${PYTHON:-python3}
BUNDLED=nas_service/assets/ghn-fashion-mnist.safetensors
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

mkdir -p "$OUT_DIR"
$PY -c "import torch, torch_geometric; print('torch', torch.__version__, 'pyg',
torch_geometric.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(),
'x', torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1
GPUS=${GPUS:-$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")}
if (( GPUS > 1 )); then
  TRAIN=($PY -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m nas_service)
else
  TRAIN=($PY -m nas_service)
fi
echo "$GPUS GPU(s): ${TRAIN[*]} train-ghn"

if (( BENCH )); then
  timeout 150 $PY bench/ghn_training_bench.py --device cuda --threads 4 --steps 30 \
    --data-root "$DATA_DIR" --out "$OUT_DIR/ghn_training_bench.json" >/tmp/bench.log 2>&1
  echo "bench exit $? at $(elapsed) s"; tail -n 2 /tmp/bench.log
fi

# Ground truth: 5 epochs of SGD, scored on the test split, then the 1-epoch SGD baseline on the
# first 2000 validation images (the protocol of `rank-ghn --eval-images 2000`).
for ((k = 0; k < SHARDS; k++)); do
  CUDA_VISIBLE_DEVICES=$((k % GPUS)) timeout $((BUDGET + 20)) $PY -m nas_service rank-ghn \
    --truth-only --shard "$k/$SHARDS" --data-root "$DATA_DIR" --held-out 50 --eval-images 2000 \
    --cache "$OUT_DIR/ground-truth.json" --out /tmp/rank >"/tmp/truth-$k.log" 2>&1 &
done

# Calibration: 40 steps on the GPUs as loaded as they will be, then the real run.
rm -rf /tmp/calibrate
timeout 150 "${TRAIN[@]}" train-ghn --out /tmp/calibrate --init-from "$BUNDLED" \
  --data-root "$DATA_DIR" --steps 1540 --log-every 10 --no-progress >/tmp/calibrate.log 2>&1
SPS=$($PY -c "import json; r=[json.loads(l) for l in open('/tmp/calibrate/log.jsonl')];
s=[x['seconds_per_step'] for x in r if 'seconds_per_step' in x][1:]; print(sum(s)/len(s))") \
  || { cat /tmp/calibrate.log; exit 1; }
LEFT=$((BUDGET - $(elapsed) - 45))  # validation, checkpoints, start-up
STEPS=$($PY -c "print(1500 + max(50, int($LEFT / $SPS)))")
echo "calibration: $SPS s/step at $(elapsed) s; training to step $STEPS"

timeout $((BUDGET - $(elapsed) + 15)) "${TRAIN[@]}" train-ghn --out "$OUT_DIR/run" \
  --init-from "$BUNDLED" --data-root "$DATA_DIR" --steps "$STEPS" --no-progress \
  >/tmp/train.log 2>&1
echo "train-ghn exit $? at $(elapsed) s"; tail -n 3 /tmp/train.log

wait
if (( SHARDS )); then
  echo "ground truth done at $(elapsed) s"
  for ((k = 0; k < SHARDS; k++)); do tail -n 1 "/tmp/truth-$k.log"; done
  $PY -c "import json; print(len(json.load(open('$OUT_DIR/ground-truth.json'))), 'cached results')"
fi
