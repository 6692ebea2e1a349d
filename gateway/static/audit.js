// Read-only audit browser. Data is only ever inserted with textContent (never innerHTML).
// The admin token comes from the #token=... fragment (never sent to the server in the URL) or the
// form, and is kept in sessionStorage for this tab only.
"use strict";

const FILTERS = ["agent", "user", "tenant", "run", "host", "method", "decision", "kind", "status", "path", "since", "until", "call_id"];
const COLUMNS = ["time", "kind", "agent", "user", "tenant", "method", "host", "path", "decision", "status", "error"];
const $ = (id) => document.getElementById(id);

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("wardgate-admin-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("wardgate-admin-token");
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  const body = await response.json();
  if (!response.ok) throw new Error(`${body.error?.code || response.status}: ${body.error?.message || ""}`);
  return body;
}

function when(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function say(text) { $("message").textContent = text; }

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

async function list(params) {
  const query = new URLSearchParams();
  for (const name of FILTERS) if (params.get(name)) query.set(name, params.get(name));
  query.set("limit", params.get("limit") || "50");
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  const body = await api(`/v1/audit/records?${query}`);
  const tbody = $("records").querySelector("tbody");
  for (const record of body.records) {
    const tr = document.createElement("tr");
    tr.dataset.id = record.id;
    tr.dataset.callId = record.call_id;
    for (const column of COLUMNS) {
      if (column === "time") {
        const td = document.createElement("td");
        const link = document.createElement("a");
        link.href = `/ui/audit?id=${encodeURIComponent(record.id)}`;
        link.textContent = when(record.time);
        td.appendChild(link);
        tr.appendChild(td);
      } else {
        cell(tr, record[column], column === "path" ? "path" : "");
      }
    }
    tbody.appendChild(tr);
  }
  $("records").hidden = false;
  say(body.records.length ? `${body.records.length} record(s), newest first` : "no records match");
  if (body.next_cursor) {
    const next = new URLSearchParams(params);
    next.set("cursor", body.next_cursor);
    $("next").href = `/ui/audit?${next}`;
    $("next").hidden = false;
  }
}

async function detail(id) {
  const body = await api(`/v1/audit/records/${encodeURIComponent(id)}`);
  const record = body.record, verification = body.verification;
  $("detail-id").textContent = record.id;
  $("verification").textContent = verification.status;
  $("verification").dataset.status = verification.status;
  $("verification-detail").textContent = verification.covered_by
    ? `— chain ${verification.writer} seq ${verification.seq}, covered by the signed ${verification.covered_by.kind} checkpoint at seq ${verification.covered_by.seq}`
    : `— chain ${verification.writer} seq ${verification.seq}, after the chain's last signed checkpoint`;
  for (const problem of verification.problems) {
    const li = document.createElement("li");
    li.textContent = problem;
    $("problems").appendChild(li);
  }
  $("call-link").href = `/ui/audit?call_id=${encodeURIComponent(record.call_id)}`;
  const tbody = $("fields").querySelector("tbody");
  for (const [name, value] of Object.entries(record)) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = name;
    tr.appendChild(th);
    cell(tr, name === "time" ? `${when(value)} (${value})` : Array.isArray(value) ? value.join(", ") : value);
    tbody.appendChild(tr);
  }
  $("detail").hidden = false;
  say("");
}

async function main() {
  const params = new URLSearchParams(location.search);
  for (const name of FILTERS) {
    const input = document.querySelector(`#filters [name="${name}"]`);
    if (input && params.get(name)) input.value = params.get(name);
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("wardgate-admin-token", $("token").value);
    location.reload();
  });
  if (!token()) {
    $("token-form").hidden = false;
    say("an admin token is needed to read the audit log");
    return;
  }
  try {
    if (params.get("id")) await detail(params.get("id"));
    else await list(params);
  } catch (error) {
    say(`error: ${error.message}`);
  }
}

main();
