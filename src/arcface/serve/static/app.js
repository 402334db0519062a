// The arcface web page: enrol, search and list people through the REST API (Bearer key from the page).
"use strict";

const KEY_ITEM = "arcface-api-key";

function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

function show(el, text, cls) {
  el.textContent = text;
  el.className = cls || "";
}

// fetch with the key; returns the JSON body or throws an Error with the service's message.
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + apiKey() };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new Error("network error: " + e.message);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const err = data && data.error;
    const msg = err ? err.message + " (" + err.code + ")" : "HTTP " + resp.status;
    throw new Error(msg);
  }
  return data;
}

function imageForm(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  return form;
}

async function refreshPeople() {
  const list = document.getElementById("people-list");
  const status = document.getElementById("people-status");
  if (!apiKey()) {
    show(status, "Enter the API key to list people.", "muted");
    list.replaceChildren();
    return;
  }
  try {
    // The list comes in pages by id: follow next_after to the end.
    const people = [];
    let after = 0;
    for (;;) {
      const page = await api("GET", "/v1/identities?limit=500&after=" + after);
      people.push(...page.identities);
      if (page.next_after === null) break;
      after = page.next_after;
    }
    list.replaceChildren();
    for (const p of people) {
      const li = document.createElement("li");
      li.id = "person-" + p.id;
      li.textContent = p.name + " — " + p.faces + (p.faces === 1 ? " face" : " faces");
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "Delete";
      del.setAttribute("aria-label", "Delete " + p.name);
      del.addEventListener("click", async () => {
        if (!confirm("Delete " + p.name + " and their faces?")) return;
        try {
          await api("DELETE", "/v1/identities/" + p.id);
          await refreshPeople();
        } catch (e) {
          show(status, "Delete failed: " + e.message, "error");
        }
      });
      li.appendChild(del);
      list.appendChild(li);
    }
    show(status, people.length ? "" : "Nobody enrolled yet.", "muted");
  } catch (e) {
    show(status, e.message, "error");
  }
}

async function enrol(ev) {
  ev.preventDefault();
  const out = document.getElementById("enrol-result");
  const name = document.getElementById("enrol-name").value.trim();
  const files = Array.from(document.getElementById("enrol-photos").files);
  const button = document.getElementById("enrol-submit");
  out.replaceChildren();
  delete out.dataset.done;
  const line = (text, cls) => {
    const li = document.createElement("li");
    show(li, text, cls);
    out.appendChild(li);
    return li;
  };
  if (!name || files.length === 0) {
    line("Give a name and at least one photo.", "error");
    return;
  }
  button.disabled = true;
  try {
    let ident;
    try {
      ident = await api("POST", "/v1/identities", { name, metadata: {} });
    } catch (e) {
      line("Could not create " + name + ": " + e.message, "error");
      out.dataset.done = "failed";
      return;
    }
    line("Created " + ident.name + " (id " + ident.id + ")", "ok");
    let failed = 0;
    for (const file of files) {
      try {
        const face = await api("POST", "/v1/identities/" + ident.id + "/faces", imageForm(file));
        line(file.name + ": enrolled (face " + face.id + ", " + face.faces_in_image + " in photo)", "ok");
      } catch (e) {
        failed += 1;
        line(file.name + ": " + e.message, "error");
      }
    }
    if (failed === 0) ev.target.reset();
    out.dataset.done = String(ident.id);
  } finally {
    button.disabled = false;
    await refreshPeople();
  }
}

async function search(ev) {
  ev.preventDefault();
  const status = document.getElementById("search-status");
  const table = document.getElementById("search-results");
  const body = table.querySelector("tbody");
  const file = document.getElementById("search-photo").files[0];
  const k = document.getElementById("search-k").value || "5";
  const button = document.getElementById("search-submit");
  table.hidden = true;
  body.replaceChildren();
  if (!file) {
    show(status, "Choose a photo.", "error");
    return;
  }
  button.disabled = true;
  show(status, "Searching…", "muted");
  try {
    const data = await api("POST", "/v1/search?k=" + encodeURIComponent(k), imageForm(file));
    for (const m of data.matches) {
      const tr = document.createElement("tr");
      const cells = [
        [m.name, "name"],
        [m.similarity.toFixed(3), "similarity num"],
        [m.match === null ? "n/a" : m.match ? "yes" : "no", "match"],
      ];
      for (const [text, cls] of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        td.className = cls;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.hidden = data.matches.length === 0;
    // Search is open-set identification: "match" uses the identification threshold, not the 1:1 one.
    const thr = data.threshold === null ? "none (not calibrated)" : data.threshold.toFixed(3);
    show(status, data.matches.length ? "Identification threshold " + thr + "." : "The gallery is empty.", "muted");
  } catch (e) {
    show(status, "Search failed: " + e.message, "error");
  } finally {
    button.disabled = false;
  }
}

// The service's state; the model and its thresholds only come with a valid key.
async function health() {
  const el = document.getElementById("health");
  const fmt = (t) => (t === null || t === undefined ? "none" : t.toFixed(3));
  try {
    const headers = apiKey() ? { Authorization: "Bearer " + apiKey() } : {};
    const resp = await fetch("/health", { headers });
    const h = await resp.json();
    if (h.model === undefined) {
      el.textContent = "Service up. Enter the API key to see the model.";
    } else {
      el.textContent = "Model " + h.model + ", verification threshold " + fmt(h.threshold) +
        ", identification threshold " + fmt(h.identification_threshold);
    }
  } catch (e) {
    el.textContent = "The service does not answer.";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const keyInput = document.getElementById("api-key");
  keyInput.value = apiKey();
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_ITEM, keyInput.value.trim());
    show(document.getElementById("key-status"), "Key set for this tab.", "ok");
    health();
    refreshPeople();
  });
  document.getElementById("enrol-form").addEventListener("submit", enrol);
  document.getElementById("search-form").addEventListener("submit", search);
  document.getElementById("people-refresh").addEventListener("click", refreshPeople);
  health();
  refreshPeople();
});
