"""The BPO rewriter instruction (Cheng et al. 2023, arXiv 2311.04155), our wording.

One template for both sides: `trainers.sft` trains a rewriter under it and `generators.bpo` runs
zero-shot or trained rewriters under it, so the two can never drift apart.
"""

REWRITER_TEMPLATE_VERSION = "bpo-rewriter-1"
REWRITER_INSTRUCTION = ("Rewrite the instruction below so that an assistant will answer it more helpfully, "
                        "accurately and safely. Keep every detail and the intent; do not answer it.\n\n"
                        "Instruction:\n{prompt}")
