"""Model evaluations (issue 13, item 8), each usable from the CLI (`prefdata eval policy|ranking`)
and from Python with engines you already hold:

- `policy`: win / tie / loss of a model's answers against a baseline's on a prompt set, judged in
  both orders (a win needs both), with a length-controlled win rate and bootstrap intervals;
- `ranking`: the DPO implicit-reward ranking accuracy of a trained policy on pairs, beside the
  reference model's own likelihood ranking accuracy (Chen et al. 2024, arXiv 2405.19534).
"""
