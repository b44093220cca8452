"""Additive 5-point rubric for pointwise judging (Self-Rewarding LMs, Yuan et al. 2024, arXiv 2401.10020).

The structure follows the paper (one point per criterion, five criteria, a short justification, a
final "Score: <n>" line); the wording is ours. Changing any text below means bumping TEMPLATE_VERSION:
it is part of every judge request's cache key and of the lineage.
- rubric-judge-1: the last user turn only (a follow-up such as "and in French?" was judged blind).
- rubric-judge-2: the whole conversation before the reply ("Role: text" turns, the transcript the
  pairwise judge reads: `prompts.pairwise.render_conversation`).
"""

TEMPLATE_VERSION = "rubric-judge-2"

RUBRIC = """Rate the assistant's reply that continues the conversation below with the additive scale. The request is the user's last message, read in the light of everything said before it. Start at 0 and add a point for each statement that holds:
1. The reply is on topic and gives some information related to the request.
2. The reply deals with a substantial part of the request, even if not all of it.
3. The reply answers the core of the request in a useful way.
4. The reply is direct, complete and well organised, written from an assistant's point of view.
5. The reply is expert-level, tailored to the request and engaging, with nothing extraneous.

Conversation:
{conversation}

Assistant reply:
{answer}

{instruction}"""

JUSTIFY_THEN_SCORE = 'Write at most three sentences of justification, then end with a final line of the form "Score: <points>".'
# Small models rarely reach a score line after free-form justification; starting the reply with
# "Score:" (as an assistant prefix) makes the number the first thing they write.
SCORE_FIRST = 'Start your reply with "Score: <points>", then justify it in at most two sentences.'
SCORE_PREFIX = "Score: "
