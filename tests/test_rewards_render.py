"""One conversation renderer: the backbone features and the judges read the same transcript.

The feature cache is keyed by sha256 of the rendered (context, answer) text, so the exact string is
pinned here: a change to `render_conversation` that alters it invalidates every cached feature."""

from prefdata.prompts.pairwise import render_conversation
from prefdata.rewards.features import render, split_render

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello."}, {"role": "tool", "content": 3},
          {"role": "critic", "content": "ok"}, {"role": "user", "content": "Sum 1+2?"}]
ANSWER = [{"role": "assistant", "content": "3"}]


def test_render_is_the_judges_transcript_and_pinned():
    text = render(PROMPT, ANSWER)
    assert text == render_conversation(PROMPT + ANSWER)
    # The pre-merge features.render output, byte for byte (so cached features keep their keys).
    assert text == ("System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nTool: 3\n\ncritic: ok\n\n"
                    "User: Sum 1+2?\n\nAssistant: 3")


def test_split_render_cuts_before_the_answer():
    ctx, ans = split_render(PROMPT, ANSWER)
    assert ans == "3"
    assert ctx + ans == render(PROMPT, ANSWER)
    assert ctx.endswith("User: Sum 1+2?\n\nAssistant: ")
    assert split_render(PROMPT, []) == (render_conversation(PROMPT), "")
