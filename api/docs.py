"""/docs: the OpenAPI document rendered as one readable HTML page.

Rendered on the server from the same document the JSON route serves, with no
JavaScript and nothing fetched from a CDN, so it works offline and behind a
firewall.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{margin-top:2.5rem;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.method{font-weight:700;text-transform:uppercase;margin-right:.5rem}
.get{color:#0a6}.post{color:#06c}.delete{color:#c30}
.deprecated{color:#999;text-decoration:line-through}
code,pre{background:#f5f5f5;border-radius:4px;padding:.1rem .3rem}
pre{padding:.6rem;overflow:auto;font-size:13px}
td,th{text-align:left;padding:.2rem .6rem;vertical-align:top}
"""


def render(doc: dict[str, Any]) -> str:
    info = doc["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info['title'])} API</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} API</h1><p>{escape(info['description'])}</p>",
        '<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a> '
        '(OpenAPI 3). Upload page: <a href="/">/</a>.</p><h2>Routes</h2>',
    ]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            parts.append(_operation(path, method, op))
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h3 id=schema-{escape(name)}>{escape(name)}</h3>")
        parts.append(f"<pre>{escape(json.dumps(schema, indent=2))}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    css = "deprecated" if op.get("deprecated") else ""
    out = [
        f"<div class=op><p><span class='method {method}'>{method}</span>",
        f"<code class='{css}'>{escape(path)}</code> — {escape(op.get('summary', ''))}",
        " (alias kept for earlier clients)" if op.get("deprecated") else "",
        "</p>",
    ]
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th></th></tr>")
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td>{escape(json.dumps(p['schema']))}</td>"
                f"<td>{escape(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        for ctype, media in body["content"].items():
            out.append(f"<p>Body: <code>{escape(ctype)}</code></p>")
            out.append(_fields(media["schema"]))
    out.append("<table><tr><th>status</th><th>meaning</th></tr>")
    for code, response in op["responses"].items():
        out.append(f"<tr><td>{escape(code)}</td><td>{escape(response['description'])}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _fields(schema: dict[str, Any]) -> str:
    """A form's fields with their type, range and meaning: what a caller needs to fill it."""
    required = set(schema.get("required", []))
    out = ["<table><tr><th>field</th><th>schema</th><th></th></tr>"]
    for name, field in schema.get("properties", {}).items():
        shape = {k: v for k, v in field.items() if k != "description"}
        need = "required. " if name in required else ""
        out.append(
            f"<tr><td><code>{escape(name)}</code></td><td>{escape(json.dumps(shape))}</td>"
            f"<td>{escape(need + field.get('description', ''))}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)
