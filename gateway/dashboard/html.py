"""The pages' shared HTML: the layout, tables, the sign-in and error pages, the style
sheet.  Templates are f-strings; every value that comes from data or configuration
goes through `e()` (html.escape with quotes), so a model or key name can never become
markup.  No script anywhere: the CSP forbids it and nothing needs it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Final

STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { background: #1f2937; color: #fff; padding: 10px 20px; display: flex; align-items: center; gap: 16px; }
header a { color: #fff; } header .who { margin-left: auto; } header form { display: inline; }
main { padding: 16px 20px; max-width: 1100px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; } .error { color: #b00020; } .empty { color: #777; font-style: italic; }
.chart { background: #fff; border: 1px solid #ddd; max-width: 100%; height: auto; }
form.signin { background: #fff; border: 1px solid #ddd; padding: 16px; max-width: 420px; }
form.signin input[type=password] { width: 100%; padding: 6px; margin: 8px 0; box-sizing: border-box; }
nav.periods a { margin-right: 10px; } nav.periods a.on { font-weight: bold; }
.ok { color: #137333; } .cool { color: #b00020; font-weight: bold; }
"""


def e(value: object) -> str:
    return escape(str(value), quote=True)


def num(value: object) -> str:
    """Integers with thousands separators; None as a dash (unlimited, not measured)."""
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"  # type: ignore[call-overload]


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def day(number: int) -> str:
    return datetime.fromtimestamp(number * 86400, UTC).strftime("%Y-%m-%d")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = (),
          cls: str = "") -> str:  # fmt: skip
    """A table; columns whose index is in `numeric` are right-aligned numbers."""
    right = set(numeric)
    head = "".join(f"<th{' class=n' if i in right else ''}>{e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f'<td class="n">{num(v)}</td>' if i in right else f"<td>{e(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(headers)}" class="empty">none</td></tr>')
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def layout(title: str, body: str, *, who: str | None = None, csrf: str | None = None) -> str:
    """The whole page.  Signed in: who, and the sign-out button (a POST with its token)."""
    signout = ""
    if who is not None and csrf is not None:
        signout = (
            f'<span class="who">signed in as {e(who)}</span><form method="post" action="/dashboard/signout">'
            f'<input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit">Sign out</button></form>'
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)} · gateway</title><link rel="stylesheet" href="/dashboard/style.css">'
        '<link rel="icon" href="data:,"></head>'  # no favicon request to the API's 404'
        f"<body><header><strong>gateway dashboard</strong>{signout}</header><main>{body}</main></body></html>"
    )


def signin_page(csrf: str, *, error: str | None = None, operator_on: bool = True) -> str:
    operator = (
        "Operators sign in with the admin key (<code>metrics.admin_key</code>)."
        if operator_on
        else "The operator view is off: this gateway has no <code>metrics.admin_key</code> configured."
    )
    failed = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    body = (
        f"<h1>Sign in</h1>{failed}"
        '<form class="signin" method="post" action="/dashboard/signin">'
        '<label for="key">Your gateway key</label>'
        '<input id="key" name="key" type="password" autocomplete="off" required>'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<button type="submit">Sign in</button></form>'
        f'<p class="note">Key holders see their own tier, limits and usage. {operator}</p>'
        '<p class="note">The key is exchanged for a session cookie; it is not kept.</p>'
    )
    return layout("Sign in", body)


def message_page(title: str, text: str) -> str:
    return layout(title, f'<h1>{e(title)}</h1><p>{e(text)}</p><p><a href="/dashboard/">Back</a></p>')


def periods(base: str, name: str, choices: Sequence[str], current: str) -> str:
    links = "".join(
        f'<a href="{e(base)}?{e(name)}={e(c)}"{" class=on" if c == current else ""}>{e(c)}</a>' for c in choices
    )
    return f'<nav class="periods">Period: {links}</nav>'
