"""BPO prompts (Cheng et al. 2023, arXiv 2311.04155), our wording.

- Construction: an LLM compares a good and a bad reply, then rewrites the instruction so it would
  elicit the good kind of reply (`CONSTRUCT_PROMPT`, one tagged call; or `COMPARE_PROMPT` then
  `OPTIMIZE_PROMPT` for engines that cannot keep tags). Version: TEMPLATE_VERSION.
- Rewriting: one instruction for both sides. `trainers.sft` trains a rewriter under it and
  `generators.bpo` runs zero-shot or trained rewriters under it, so the two can never drift apart.
  Version: REWRITER_TEMPLATE_VERSION.
"""

TEMPLATE_VERSION = "bpo-construct-1"

# What both construction prompts show: the instruction and the judged pair.
PAIR_CONTEXT = """An instruction was given to an assistant. One reply was judged good and one bad.

Instruction:
{instruction}

Good reply:
{good}

Bad reply:
{bad}

"""
CONSTRUCT_PROMPT = PAIR_CONTEXT + """First compare the two replies on correctness, helpfulness and harmlessness. Then rewrite the instruction so that an assistant would be more likely to give a reply like the good one. The new instruction must keep all of the original information and intent, must not copy details from the good reply, and must not answer the instruction itself.
Use exactly this format:
<comparison>your comparison</comparison>
<optimized>the rewritten instruction</optimized>
<end>"""

# Two-call variant: the comparison and the rewritten instruction are asked for separately, each as
# plain text (a 135M model cannot keep the tagged format).
COMPARE_PROMPT = PAIR_CONTEXT + """In two or three sentences, compare the two replies on correctness, helpfulness and harmlessness."""
OPTIMIZE_PROMPT = """Instruction:
{instruction}

A comparison of a good and a bad answer to it:
{comparison}

Rewrite the instruction so that an assistant would answer it like the good reply. Keep all of its information and intent, add no details from the answers, and do not answer it. Write only the rewritten instruction."""

REWRITER_TEMPLATE_VERSION = "bpo-rewriter-1"
REWRITER_INSTRUCTION = ("Rewrite the instruction below so that an assistant will answer it more helpfully, "
                        "accurately and safely. Keep every detail and the intent; do not answer it.\n\n"
                        "Instruction:\n{prompt}")
