// The /docs try-it forms. No build step, nothing from a CDN: plain DOM and fetch,
// inlined into the page by api/docs.py. Only documented routes are called.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "imagepipe-key"; // the upload page keeps the key under the same name

  $("key").value = localStorage.getItem(KEY) || "";
  $("key").addEventListener("change", () => localStorage.setItem(KEY, $("key").value.trim()));

  function headers() {
    const key = $("key").value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // Call the API and show what came back: the status line, then the body
  // (JSON indented). Returns the parsed JSON, if any.
  async function show(method, path, body) {
    const call = method + " " + path;
    $("try-call").textContent = call + " …";
    $("try-answer").hidden = true;
    let response;
    try {
      response = await fetch(path, { method, body, headers: headers() });
    } catch (e) {
      $("try-call").textContent = call + ": no answer (" + e.message + ")";
      return null;
    }
    const text = await response.text();
    let json = null;
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try { json = JSON.parse(text); } catch (e) { /* shown as text */ }
    }
    $("try-call").textContent = call + " → " + response.status + " " + response.statusText;
    $("try-answer").textContent = json === null ? text : JSON.stringify(json, null, 2);
    $("try-answer").hidden = false;
    return json;
  }

  $("try-upload").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData();
    // Fields left empty are left out: the server's defaults apply.
    for (const [name, value] of new FormData(event.target)) {
      if (value instanceof File ? value.name : value.trim()) form.append(name, value);
    }
    const accepted = await show("POST", event.target.getAttribute("action"), form);
    if (accepted && accepted.request_id) $("try-id").value = accepted.request_id;
  });

  $("try-status").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = encodeURIComponent($("try-id").value.trim());
    show("GET", $("try-view").value.replace("{request_id}", id));
  });
})();
