"""Editing prompts and aspect guidelines for preference-conditional synthesis (RMBoost, Shen et al.
2024, arXiv 2407.16008), in our own wording.

The editor sees the request and a draft y1 and must make it better or worse on a few aspects of a
guideline. `EDIT_PROMPT` lets the model pick the aspects and name them in tags (the method as
published); `EDIT_PROMPT_SEEDED` names aspects drawn with the seed, for engines that cannot keep a
tagged format. Bump TEMPLATE_VERSION (prompts) or GUIDELINES_VERSION (aspects) on any change.
"""

TEMPLATE_VERSION = "conditional-edit-1"
GUIDELINES_VERSION = "aspects-1"

# Aspect names are what the editor must echo back in <aspects>; keep them single words.
GUIDELINES: dict[str, list[str]] = {
    "chat": ["helpfulness", "relevance", "completeness", "honesty", "harmlessness"],
    "summarization": ["coherence", "accuracy", "coverage"],
}

EDIT_PROMPT = """Here is a user request and a draft reply.

Request:
{question}

Draft reply:
{draft}

Rewrite the draft so that it becomes clearly {direction} on one to three of these aspects: {aspects}. Change only what those aspects need.
Answer in exactly this format:
<aspects>the aspects you changed, comma-separated</aspects>
<response>the rewritten reply</response>"""

EDIT_PROMPT_SEEDED = """Here is a user request and a draft reply.

Request:
{question}

Draft reply:
{draft}

Rewrite the draft so that it becomes clearly {direction} in {aspects}. Reply with the rewritten reply only."""
