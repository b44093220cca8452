"""Server-rendered HTML for the review page: no CDN, no external asset, inline CSS/JS under a CSP nonce.

Every piece of dataset text passes through `esc` (quotes too, since some land in attributes); the
CSP forbids any script without this response's nonce as a second line of defence.
"""

from __future__ import annotations

import difflib
import html
import re

KEY_HELP = (("1", "answer 1 is better"), ("2", "answer 2 is better"), ("t", "tie"), ("d", "drop pair"),
            ("s", "skip"), ("u", "undo"))

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:12px 20px;color:#222}
header{display:flex;gap:16px;align-items:baseline;flex-wrap:wrap;border-bottom:1px solid #ddd;padding-bottom:6px}
.msg{border-left:3px solid #aac;padding:4px 10px;margin:6px 0;background:#f7f7fb;white-space:pre-wrap}
.role{font-size:12px;color:#667;text-transform:uppercase}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:14px;margin-top:10px}
.answer{border:1px solid #ccd;border-radius:6px;padding:8px 12px;white-space:pre-wrap;overflow-wrap:anywhere}
.answer h3{margin:0 0 6px 0}
del{background:#fdd;text-decoration:none}ins{background:#dfd;text-decoration:none}
.keys button{margin:2px;padding:4px 10px;font:inherit;cursor:pointer}
kbd{border:1px solid #999;border-radius:3px;padding:0 4px;background:#eee}
#status{color:#a00;font-weight:bold}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.muted{color:#777;font-size:13px}
"""

JS = """
const pair = document.getElementById('pair');
const csrf = document.querySelector('meta[name=csrf]').content;
const keys = new Set(['1', '2', 't', 'd', 's']);
let busy = false;
async function send(url, body) {
  if (busy) return;
  busy = true;
  const status = document.getElementById('status');
  try {
    const r = await fetch(url, {method: 'POST', credentials: 'same-origin', body: JSON.stringify(body),
                                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}});
    if (!r.ok) { status.textContent = 'NOT saved (' + r.status + '): ' + await r.text(); busy = false; return; }
    location.href = (await r.json()).next;
  } catch (e) { status.textContent = 'NOT saved: ' + e; busy = false; }
}
function press(k) {
  if (k === 'u') return send('/undo', {});
  if (pair && keys.has(k)) return send('/decide', {pair_id: pair.dataset.id, key: k});
}
document.addEventListener('keydown', e => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  press(e.key.toLowerCase());
});
document.querySelectorAll('button[data-key]').forEach(b => b.addEventListener('click', () => press(b.dataset.key)));
"""


def esc(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _tokens(text: str) -> list[str]:
    # Words and the whitespace between them, so the diff keeps the answer's own line breaks.
    return [t for t in re.split(r"(\s+)", text) if t]


def word_diff(a: str, b: str) -> tuple[str, str]:
    """Both texts as escaped HTML, words only in `a` in <del>, words only in `b` in <ins>."""
    ta, tb = _tokens(a), _tokens(b)
    sm = difflib.SequenceMatcher(None, ta, tb, autojunk=False)
    out_a, out_b = [], []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        sa, sb = esc("".join(ta[i1:i2])), esc("".join(tb[j1:j2]))
        if op == "equal":
            out_a.append(sa), out_b.append(sb)
            continue
        if sa:
            out_a.append(f"<del>{sa}</del>")
        if sb:
            out_b.append(f"<ins>{sb}</ins>")
    return "".join(out_a), "".join(out_b)


def answer_text(messages) -> str:
    """One answer as text; a multi-turn answer keeps its roles in brackets."""
    if isinstance(messages, str):
        return messages
    msgs = list(messages or [])
    if len(msgs) == 1:
        return msgs[0].get("content") or ""
    return "\n\n".join(f"[{m.get('role')}] {m.get('content') or ''}" for m in msgs)


def _conversation(prompt) -> str:
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return "".join(f'<div class="msg"><div class="role">{esc(m.get("role"))}</div>{esc(m.get("content"))}</div>'
                   for m in prompt or [])


def _votes(votes: list[tuple[str, float]], swapped: bool) -> str:
    if not votes:
        return '<p class="muted">No voter families recorded for this pair.</p>'
    rows = []
    for fam, v in votes:
        # A family's vote leans towards the stored chosen answer when positive; say which side that is here.
        toward = ("answer 2" if swapped else "answer 1") if v > 0 else ("answer 1" if swapped else "answer 2")
        rows.append(f"<tr><td>{esc(fam)}</td><td>{abs(v):.2f}</td><td>{esc(toward if v else '—')}</td></tr>")
    return ("<details><summary>Voter families (open after deciding, to avoid anchoring)</summary><table>"
            "<tr><th>family</th><th>strength</th><th>favours</th></tr>" + "".join(rows) + "</table></details>")


def page(title: str, body: str, *, nonce: str, csrf: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="csrf" content="{esc(csrf)}"><style nonce="{esc(nonce)}">{CSS}</style></head>'
            f'<body>{body}<script nonce="{esc(nonce)}">{JS}</script></body></html>')


def _header(ref: str, annotator: str, done: int, total: int) -> str:
    keys = " ".join(f'<button data-key="{k}"><kbd>{k}</kbd> {esc(h)}</button>' for k, h in KEY_HELP)
    return (f"<header><strong>prefdata review</strong><span>{esc(ref)}</span><span>annotator: {esc(annotator)}</span>"
            f'<span id="progress">decided {done} of {total}</span><span id="status"></span></header>'
            f'<div class="keys">{keys}</div>')


def _recent(recent: list[dict]) -> str:
    if not recent:
        return ""
    names = {"keep": "label kept", "flip": "label flipped", "tie": "tie", "drop": "dropped", "skip": "skipped"}
    items = "".join(f'<li data-pair="{esc(r["pair_id"])}" data-decision="{esc(r["decision"])}">'
                    f'{esc(r["pair_id"])}: {esc(names.get(r["decision"], r["decision"]))}</li>' for r in recent)
    return f'<h4>Your latest decisions</h4><ul id="recent">{items}</ul>'


def pair_page(*, ref: str, annotator: str, done: int, total: int, row: dict, swapped: bool,
              votes: list[tuple[str, float]], recent: list[dict], nonce: str, csrf: str, current: str | None) -> str:
    chosen, rejected = answer_text(row.get("chosen")), answer_text(row.get("rejected"))
    a1, a2 = (rejected, chosen) if swapped else (chosen, rejected)
    h1, h2 = word_diff(a1, a2)
    w1, w2 = len(a1.split()), len(a2.split())
    ratio = f"{w1 / w2:.2f}" if w2 else "∞"
    already = (f'<p class="muted">You decided this pair already ({esc(current)}); a new key replaces it.</p>'
               if current else "")
    body = (_header(ref, annotator, done, total)
            + f'<main id="pair" data-id="{esc(row["id"])}"><p class="muted">pair {esc(row["id"])} · length ratio '
            f'(answer 1 / answer 2, words): {ratio} ({w1} / {w2})</p>{already}'
            f"<h2>Conversation</h2>{_conversation(row.get('prompt'))}"
            f'<div class="answers"><div class="answer" id="answer1"><h3>Answer 1</h3>{h1}</div>'
            f'<div class="answer" id="answer2"><h3>Answer 2</h3>{h2}</div></div>'
            f"{_votes(votes, swapped)}</main>{_recent(recent)}")
    return page(f"review {ref}", body, nonce=nonce, csrf=csrf)


def done_page(*, ref: str, annotator: str, done: int, total: int, recent: list[dict], nonce: str, csrf: str) -> str:
    body = (_header(ref, annotator, done, total)
            + '<main id="done"><h2>Queue finished</h2><p>Every pair offered to you is decided. Press '
            f"<kbd>u</kbd> to undo the last one, or commit with <code>prefdata review commit {esc(ref)}</code>.</p>"
            f"</main>{_recent(recent)}")
    return page(f"review {ref}", body, nonce=nonce, csrf=csrf)
