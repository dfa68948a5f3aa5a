"""The one metric vocabulary: the engine reports these names, and the pruner, MLflow and the plots read them.

Names follow TRL's PPO trainer where one exists. KL values are in nats.
"""

from __future__ import annotations

KL = "objective/kl"  # batch mean of the KL summed over each response (nats): what the KL limit bounds
KL_COEF = "objective/kl_coef"  # beta used for this iteration's penalty
SCORES = "objective/scores"  # mean reward-function score of the rollout batch
SCORES_STD = "objective/scores_std"
RLHF_REWARD = "objective/rlhf_reward"  # score minus beta * KL, per sample, batch mean
ENTROPY = "objective/entropy"  # mean per-token entropy of the policy on its responses (nats)
NON_SCORE_REWARD = "objective/non_score_reward"  # -beta * KL, batch mean
APPROXKL = "policy/approxkl_avg"  # 0.5 * E[(log p_new - log p_old)^2] over updates
CLIPFRAC = "policy/clipfrac_avg"  # fraction of tokens whose ratio was clipped
POLICY_LOSS = "loss/policy_avg"
VALUE_LOSS = "loss/value_avg"
VALUE_CLIPFRAC = "val/clipfrac_avg"
EXPLAINED_VARIANCE = "val/explained_variance"
RESPONSE_LENGTH = "objective/response_length"  # mean tokens per response
EVAL_SCORES = "eval/scores"  # mean score on the held-out prompts, every eval interval
# mean score of the held-out reward (eval_reward) on the same responses, where one is set
EVAL_GOLD = "eval/gold_scores"
EVALUATED = (EVAL_SCORES, EVAL_GOLD)  # measured on the held-out prompts: also once before any update
TOKENS_PER_SEC = "perf/tokens_per_sec"  # generated tokens / iteration seconds
ITERATION_SECONDS = "perf/iteration_seconds"
GENERATE_SECONDS = "perf/generate_seconds"
SCORE_SECONDS = "perf/score_seconds"  # reference, policy and value forwards plus the reward
UPDATE_SECONDS = "perf/update_seconds"
# the policy's weights given to the vLLM server before generating (save + load; 0 with rollout_engine hf)
SYNC_SECONDS = "perf/weight_sync_seconds"
LR_POLICY = "lr/policy"
LR_VALUE = "lr/value"

ALL = [
    KL, KL_COEF, SCORES, SCORES_STD, RLHF_REWARD, ENTROPY, NON_SCORE_REWARD, APPROXKL, CLIPFRAC,
    POLICY_LOSS, VALUE_LOSS, VALUE_CLIPFRAC, EXPLAINED_VARIANCE, RESPONSE_LENGTH, EVAL_SCORES, EVAL_GOLD,
    TOKENS_PER_SEC, ITERATION_SECONDS, GENERATE_SECONDS, SCORE_SECONDS, UPDATE_SECONDS, SYNC_SECONDS,
    LR_POLICY, LR_VALUE,
]
