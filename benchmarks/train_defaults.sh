#!/usr/bin/env bash
# Rebuild the committed default bundles (epsilon = 2, DP-SGD) and their non-private twins, then
# evaluate each once on its test split (brain MRI: leaked duplicates removed). Results: runs/eval/.
set -euo pipefail
cd "$(dirname "$0")/.."
PRIVMED=${PRIVMED:-.venv/bin/privmed}
mkdir -p runs/eval
for ds in covid19_xray chest_xray_pneumonia brain_tumor_mri; do
  /usr/bin/time -f "%e s wall" -o runs/eval/$ds.train_seconds \
    $PRIVMED train --dataset $ds --epsilon 2 --out bundles/$ds --quiet --json > runs/eval/$ds.train.json
  $PRIVMED train --dataset $ds --no-dp --out runs/${ds}_nodp --quiet --json > runs/eval/${ds}_nodp.train.json
  $PRIVMED evaluate bundles/$ds --split test --record --json > runs/eval/$ds.test.json
  $PRIVMED evaluate runs/${ds}_nodp --split test --record --json > runs/eval/${ds}_nodp.test.json
done
