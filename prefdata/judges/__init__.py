"""LLM judges usable with any engine (the policy can judge itself).

- `pointwise.RubricJudge`: an additive 5-point rubric ending in "Score: <n>" (Self-Rewarding LMs,
  Yuan et al. 2024, arXiv 2401.10020), judged k times; unparseable judgements give null, never a guess.
- `pairwise.PairwiseJudge`: both orders (A/B, then B/A); a verdict that flips with the order is a tie.
"""
