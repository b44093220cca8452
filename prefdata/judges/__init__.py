"""LLM judges usable with any engine (the policy can judge itself).

- `pointwise.RubricJudge`: an additive 5-point rubric ending in "Score: <n>" (Self-Rewarding LMs,
  Yuan et al. 2024, arXiv 2401.10020), judged k times; unparseable judgements give null, never a guess.
- `pairwise.PairwiseJudge`: the one pairwise judge (RLCD-Rescore, BPO evaluation, `eval policy`, the
  `judge` voter). Both orders (A/B, then B/A) of the whole conversation; a verdict that flips with the
  order is a tie, and the logprob method also gives the mean logit of x over y across both orders.
"""
