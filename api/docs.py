"""/docs: the OpenAPI document rendered as one readable HTML page, with try-it forms.

Rendered on the server, once, from the same document the JSON route serves:
each operation with its parameters, body fields, answers and examples; the
older routes named beside the operation they alias; the webhook; every schema
as a table of its fields. The reference reads without JavaScript. The try-it
forms use a small plain script (static/docs.js) inlined into the page, and
nothing is fetched from a CDN, so the page works offline and behind a firewall.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("static") / "docs.js"
UPLOAD_PATH = "/api/v1/upload"
# What the status form can fetch: (label, path with {request_id}), offered when documented.
VIEWS = (
    ("status", "/api/v1/requests/{request_id}"),
    ("status with the first page of products", "/api/v1/requests/{request_id}?page=1"),
    ("failed images", "/api/v1/requests/{request_id}/images?status=failed"),
    ("failures.csv", "/api/v1/requests/{request_id}/failures.csv"),
    ("output CSV", "/api/v1/output/{request_id}.csv"),
)

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{margin-top:2.5rem;border-bottom:1px solid #ddd}
h3{margin-bottom:.3rem}
nav a{margin-right:1rem}
.op{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.op>p:first-child{margin-top:.3rem}
.method{font-weight:700;text-transform:uppercase;margin-right:.5rem}
.get{color:#0a6}.post{color:#06c}.delete{color:#c30}
.deprecated{color:#999;text-decoration:line-through}
.aliases{color:#555;font-size:14px}
code,pre{background:#f5f5f5;border-radius:4px;padding:.1rem .3rem}
pre{padding:.6rem;overflow:auto;font-size:13px;max-height:30rem}
table{border-collapse:collapse;margin:.4rem 0}
td,th{text-align:left;padding:.2rem .6rem;vertical-align:top;border-bottom:1px solid #eee}
th{font-size:13px;color:#555;font-weight:600}
td.type{min-width:9rem;max-width:18rem}
td:first-child code{white-space:nowrap}
.req{color:#c30;font-size:13px}
details{margin:.3rem 0}summary{cursor:pointer;color:#06c}
#try form{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
#try label{display:inline-block;margin:.2rem 1rem .2rem 0}
#try-call{font-weight:600}
#try input[type=number]{width:6rem}
.errors{margin-left:1.2rem}
"""


def render(doc: dict[str, Any]) -> str:
    info = doc["info"]
    aliases = _aliases(doc)
    operations = [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if "x-alias-of" not in op
    ]
    tags = [t["name"] for t in doc.get("tags", []) if t["name"] != "webhooks"]
    server = doc["servers"][0]["url"].rstrip("/")
    server = server if server.startswith("http") else "http://localhost:5000"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>{escape(info['title'])} API</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} API</h1><p>{_prose(info['description'])}</p>",
        '<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a> '
        f"(OpenAPI {escape(doc['openapi'])}). Upload page: <a href='/'>/</a>.</p>",
        "<nav><a href='#try'>Try it</a>",
        *(f"<a href='#tag-{escape(t)}'>{escape(t.capitalize())}</a>" for t in tags),
        "<a href='#webhooks'>Webhooks</a><a href='#schemas'>Schemas</a></nav>",
        _try_it(doc),
    ]
    for tag in tags:
        parts.append(f"<h2 id='tag-{escape(tag)}'>{escape(tag.capitalize())}</h2>")
        parts.extend(
            _operation(path, method, op, aliases.get(op.get("operationId", ""), []), server)
            for path, method, op in operations
            if tag in op.get("tags", [])
        )
    parts.append("<h2 id=webhooks>Webhooks</h2>")
    for name, item in doc.get("webhooks", {}).items():
        for method, op in item.items():
            parts.append(_operation(f"your webhook URL ({name})", method, op, [], server))
    parts.append("<h2 id=schemas>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(_schema(name, schema))
    parts.append(f"<script>{SCRIPT.read_text(encoding='utf-8')}</script></body></html>")
    return "".join(parts)


def _aliases(doc: dict[str, Any]) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """operationId -> the older routes that alias it."""
    found: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "x-alias-of" in op:
                found.setdefault(op["x-alias-of"], []).append((path, method, op))
    return found


def _operation(
    path: str,
    method: str,
    op: dict[str, Any],
    aliases: list[tuple[str, str, dict[str, Any]]],
    server: str,
) -> str:
    """One operation; `server` is the base URL its request examples use."""
    css = "deprecated" if op.get("deprecated") else ""
    anchor = f" id='op-{escape(op['operationId'])}'" if "operationId" in op else ""
    out = [
        f"<div class=op{anchor}><p><span class='method {method}'>{method}</span>",
        f"<code class='{css}'>{escape(path)}</code> — {_prose(op.get('summary', ''))}</p>",
    ]
    if aliases:
        names = ", ".join(
            f"<code>{escape(m.upper())} {escape(p)}</code>" for p, m, _ in sorted(aliases)
        )
        out.append(
            f"<p class=aliases>Also at {names}: the older clients' routes, deprecated, "
            "with the same parameters and answers.</p>"
        )
    if op.get("description"):
        out.append(f"<p>{_prose(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append(
            "<table><tr><th>parameter</th><th>in</th><th>type</th><th></th><th>description</th></tr>"
        )
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td class=type>{_type(p['schema'])}</td><td>{_required(p.get('required'))}"
                f"</td><td>{_prose(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        for ctype, media in body["content"].items():
            out.append(f"<p>Body: <code>{escape(ctype)}</code> {_type(media['schema'])}</p>")
            if "properties" in media["schema"]:
                out.append(_fields(media["schema"]))
            for example in _examples(media):
                out.append(_example("Example body", example, ctype, f"{server}{path}"))
    out.append(_responses(op["responses"]))
    out.append("</div>")
    return "".join(out)


def _responses(responses: dict[str, Any]) -> str:
    """The answers, then their examples: each success's, and the errors' in one fold."""
    out = ["<table><tr><th>status</th><th>meaning</th><th>body</th></tr>"]
    for code, response in responses.items():
        shapes = ", ".join(
            _type(media["schema"])
            + ("" if ctype == "application/json" else f" <code>{escape(ctype)}</code>")
            for ctype, media in response.get("content", {}).items()
        )
        out.append(
            f"<tr><td>{escape(code)}</td><td>{_prose(response['description'])}</td>"
            f"<td>{shapes}</td></tr>"
        )
    out.append("</table>")
    errors: list[str] = []
    for code, response in responses.items():
        for ctype, media in response.get("content", {}).items():
            for example in _examples(media):
                shown = _example(f"Example {code} answer", example, ctype)
                (errors if code[0] in "45" else out).append(shown)
    if errors:
        codes = ", ".join(c for c in responses if c[0] in "45")
        out.append(
            f"<details><summary>Example errors ({escape(codes)})</summary>"
            f"<div class=errors>{''.join(errors)}</div></details>"
        )
    return "".join(out)


def _examples(media: dict[str, Any]) -> list[dict[str, Any]]:
    """A media type's examples as {summary, value}, whichever way the document gives them."""
    if "example" in media:
        return [{"summary": "", "value": media["example"]}]
    return list(media.get("examples", {}).values())


def _example(label: str, example: dict[str, Any], ctype: str, url: str = "") -> str:
    value = example["value"]
    if ctype == "multipart/form-data":
        text = _curl(value, url)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, indent=2, ensure_ascii=False)
    summary = f": {example['summary']}" if example.get("summary") else ""
    return (
        f"<details><summary>{escape(label + summary)}</summary><pre>{escape(text)}</pre></details>"
    )


def _curl(form: dict[str, Any], url: str) -> str:
    """A multipart example as the curl command that sends it (the file named products.csv)."""
    fields = [
        "-F file=@products.csv" if name == "file" else f"-F {name}={value}"
        for name, value in form.items()
    ]
    command = f"curl {' '.join(fields)} {url}"
    csv = form.get("file")
    return f"# products.csv:\n{csv}\n{command}" if isinstance(csv, str) else command


def _schema(name: str, schema: dict[str, Any]) -> str:
    out = [f"<h3 id='schema-{escape(name)}'>{escape(name)}</h3>"]
    if schema.get("description"):
        out.append(f"<p>{_prose(schema['description'])}</p>")
    out.append(_fields(schema))
    if schema.get("additionalProperties") is True:
        out.append("<p>Other fields may appear.</p>")
    return "".join(out)


def _fields(schema: dict[str, Any]) -> str:
    """An object's fields, nested ones as dotted names: name, type, required, meaning."""
    out = ["<table><tr><th>field</th><th>type</th><th></th><th>description</th></tr>"]
    out.extend(_rows(schema, ""))
    out.append("</table>")
    return "".join(out)


def _rows(schema: dict[str, Any], prefix: str) -> list[str]:
    required = set(schema.get("required", []))
    rows = []
    for name, field in schema.get("properties", {}).items():
        rows.append(
            f"<tr><td><code>{escape(prefix + name)}</code></td>"
            f"<td class=type>{_type(field)}</td><td>{_required(name in required)}</td>"
            f"<td>{_prose(field.get('description', ''))}</td></tr>"
        )
        if "properties" in field:  # an object described in place
            rows.extend(_rows(field, f"{prefix}{name}."))
        elif "properties" in field.get("items", {}):
            rows.extend(_rows(field["items"], f"{prefix}{name}[]."))
    return rows


def _required(required: bool | None) -> str:
    return "<span class=req>required</span>" if required else ""


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: its type (schemas linked), enum, range and default."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"<a href='#schema-{escape(name)}'>{escape(name)}</a>"
    for combination in ("anyOf", "oneOf", "allOf"):
        if combination in schema:
            return " or ".join(_type(s) for s in schema[combination])
    kinds = schema.get("type", "any")
    words = []
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        if kind == "array":
            words.append(f"array of {_type(schema.get('items', {}))}")
        elif kind == "object" and "properties" in schema:
            words.append("object (fields below)")
        else:
            fmt = schema.get("format")
            words.append(escape(f"{kind} ({fmt})" if fmt and kind == "string" else kind))
    text = " or ".join(words)
    notes = []
    enum = [v for v in schema.get("enum", []) if v is not None]
    if enum:
        notes.append("one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in enum))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        notes.append(f"{low} to {high}")
    elif low is not None:
        notes.append(f"≥ {low}")
    elif high is not None:
        notes.append(f"≤ {high}")
    if "default" in schema:
        notes.append(f"default <code>{escape(str(schema['default']))}</code>")
    return text + (f"<br><small>{'; '.join(notes)}</small>" if notes else "")


_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^)\s]+)\)")


def _prose(text: str) -> str:
    """Escaped text with the document's `code` and [links](https://...) as HTML."""
    html = _CODE.sub(r"<code>\1</code>", escape(text, quote=False))
    return _LINK.sub(r"<a href='\2'>\1</a>", html)


def _try_it(doc: dict[str, Any]) -> str:
    """Forms to upload a CSV and to read a request, built from the upload's documented
    fields; docs.js sends them with fetch and shows the answer (without JavaScript the
    upload form still posts, and the browser shows the JSON)."""
    form = doc["paths"][UPLOAD_PATH]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = form["schema"]
    inputs = [
        _input(name, field, name in schema.get("required", []))
        for name, field in schema["properties"].items()
    ]
    views = "".join(
        f"<option value='{escape(path)}'>{escape(label)}: GET {escape(path)}</option>"
        for label, path in VIEWS
        if path.split("?")[0] in doc["paths"]
    )
    return (
        "<section id=try><h2>Try it</h2>"
        "<p>These forms call this server's API from your browser and show the answer "
        "below them.</p>"
        "<p><label>API key (only if this service requires one) <input type=password "
        "id=key size=30 autocomplete=off></label> <small>sent as "
        "<code>Authorization: Bearer</code>; kept in this browser, shared with the upload "
        "page</small></p>"
        f"<form id=try-upload method=post action='{UPLOAD_PATH}' enctype=multipart/form-data>"
        f"<h3><span class='method post'>post</span><code>{UPLOAD_PATH}</code></h3>"
        f"{''.join(inputs)}<p><button type=submit>Upload</button></p></form>"
        "<form id=try-status><h3><span class='method get'>get</span>a request</h3>"
        "<label>request id <input id=try-id name=request_id required size=34 "
        "placeholder='the request_id of an upload'></label>"
        f"<label>what <select id=try-view>{views}</select></label>"
        "<button type=submit>Get</button></form>"
        "<p id=try-call aria-live=polite></p><pre id=try-answer hidden></pre></section>"
    )


def _input(name: str, field: dict[str, Any], required: bool) -> str:
    """One form control for a documented multipart field."""
    attrs = f"name='{escape(name)}' id='try-{escape(name)}'" + (" required" if required else "")
    if field.get("format") == "binary":
        control = f"<input type=file {attrs} accept='.csv,text/csv'>"
    elif "enum" in field:
        default = field.get("default")
        blank = f"(default{f': {default}' if default else ''})"
        options = "".join(f"<option>{escape(str(v))}</option>" for v in field["enum"])
        control = f"<select {attrs}><option value=''>{escape(blank)}</option>{options}</select>"
    elif field.get("type") == "integer":
        limits = "".join(
            f" {attr}={field[key]}"
            for attr, key in (("min", "minimum"), ("max", "maximum"))
            if key in field
        )
        control = f"<input type=number {attrs}{limits} placeholder='default' size=8>"
    else:
        control = f"<input type=text {attrs} size=40>"
    return f"<label title='{escape(field.get('description', ''))}'>{escape(name)} {control}</label>"
