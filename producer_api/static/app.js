// The upload page: POST the photos to /v1/images in batches, then follow each batch's results by server-sent
// events from the results service (another origin; its CORS allows this page's origin).
"use strict";

const BATCH_SIZE = 8;        // files per POST /v1/images (the API takes up to 16)
const BUSY_RETRIES = 3;      // a batch refused with 429/503 is sent again after Retry-After, this often
const REOPEN_LIMIT = 5;      // a results stream that was refused is reopened this often before giving up

const form = document.getElementById("upload-form");
const input = document.getElementById("file");
const dropZone = document.getElementById("drop-zone");
const keyInput = document.getElementById("api-key");
const submit = document.getElementById("submit");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const template = document.getElementById("card-template");
const modelsPanel = document.getElementById("models");
const MODELS_REFRESH_MS = 2000; // the comparison is read again at most this often while results come in

const tally = { total: 0, done: 0, failed: 0, refused: 0 };
let uploads = Promise.resolve(); // batches go one after another, even across several choices

keyInput.value = sessionStorage.getItem("apiKey") || "";
submit.hidden = true; // with JavaScript, photos are uploaded as soon as they are chosen or dropped

input.addEventListener("change", () => {
  const files = Array.from(input.files);
  input.value = ""; // so that choosing the same photo again is a change too
  start(files);
});
form.addEventListener("submit", (event) => event.preventDefault());
for (const name of ["dragenter", "dragover"]) {
  document.addEventListener(name, (event) => { event.preventDefault(); dropZone.classList.add("over"); });
}
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) dropZone.classList.remove("over"); // the pointer left the window
});
document.addEventListener("drop", (event) => {
  event.preventDefault(); // a photo dropped anywhere on the page is uploaded, never opened in its place
  dropZone.classList.remove("over");
  start(Array.from(event.dataTransfer.files));
});

function start(files) {
  if (!files.length) return;
  const items = files.map((file) => ({ file, card: makeCard(file), job: null }));
  results.prepend(...items.map((item) => item.card));
  tally.total += items.length;
  announce(`Uploading ${plural(items.length, "photo")}…`);
  for (let i = 0; i < items.length; i += BATCH_SIZE) {
    const batch = items.slice(i, i + BATCH_SIZE);
    uploads = uploads.then(() => uploadBatch(batch));
  }
}

// ---- uploading ----

async function uploadBatch(batch) {
  let pending = batch;
  let busy = 0;
  while (pending.length) {
    pending.forEach((item) => setState(item, "uploading", "Uploading…"));
    let response;
    let data;
    try {
      response = await fetch("/v1/images", { method: "POST", body: formOf(pending), headers: authHeaders() });
      data = await response.json().catch(() => ({}));
    } catch (error) {
      pending.forEach((item) => settle(item, "refused", `Upload failed: ${error.message}`));
      return;
    }
    if (response.status === 202) {
      follow(pending, data.jobs);
      return;
    }
    if ((response.status === 429 || response.status === 503) && busy++ < BUSY_RETRIES) {
      const seconds = retryAfter(response);
      pending.forEach((item) => setState(item, "uploading", `The server is busy; trying again in ${seconds} s…`));
      await sleep(seconds * 1000);
      continue;
    }
    const reason = reasonOf(response, data);
    if (data.filename && pending.length > 1) {
      // All or nothing: the API refused the whole request for one file. Mark that one, send the others.
      const culprit = pending.find((item) => sameName(item.file.name, data.filename));
      if (!culprit) {
        for (const item of pending) await uploadBatch([item]); // cannot tell which: one at a time
        return;
      }
      settle(culprit, "refused", reason);
      pending = pending.filter((item) => item !== culprit);
      continue;
    }
    pending.forEach((item) => settle(item, "refused", reason));
    return;
  }
}

function formOf(items) {
  const body = new FormData();
  for (const item of items) body.append("file", item.file, item.file.name);
  return body;
}

function reasonOf(response, data) {
  if (response.status === 401) return "Not uploaded: this server needs an API key; enter it under “API key” above, then choose the photo again.";
  return `Not uploaded: ${data.reason || data.error || `the server answered ${response.status} ${response.statusText}`.trim()}`;
}

function retryAfter(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 30) : 5;
}

function sameName(local, fromServer) {
  // The API keeps a display-safe base name; compare the same way.
  const base = local.split(/[/\\]/).pop().replace(/[\u0000-\u001f\u007f]/g, "").replace(/^\.+/, "");
  return local === fromServer || base === fromServer;
}

// ---- following the results ----

function follow(items, jobs) {
  const waiting = new Map();
  jobs.forEach((job, i) => {
    const item = items[i];
    item.job = job;
    item.card.dataset.jobId = job.id;
    item.card.querySelector(".name").textContent = job.filename;
    setState(item, "waiting", "Uploaded; waiting for the classifier…");
    waiting.set(job.id, item);
  });
  if (manyStreamUrl(jobs)) listen(waiting, 0);
  else waiting.forEach((item, id) => listen(new Map([[id, item]]), 0)); // no common base: one stream each
}

function listen(waiting, reopened) {
  const jobs = [...waiting.values()].map((item) => item.job);
  const source = new EventSource(withKey(jobs.length > 1 ? manyStreamUrl(jobs) : jobs[0].events_url));
  source.addEventListener("result", (event) => {
    const result = JSON.parse(event.data);
    const item = waiting.get(result.id);
    if (!item) return;
    waiting.delete(result.id);
    show(item, result);
    if (!waiting.size) source.close(); // done; otherwise EventSource would reconnect when the stream ends
  });
  source.addEventListener("error", () => {
    if (!waiting.size) return;
    if (source.readyState === EventSource.CLOSED) recover(waiting, reopened); // refused: 404, 401, 503, 204
    else waiting.forEach((item) => setState(item, "waiting", "Waiting for the results service…"));
  });
}

function manyStreamUrl(jobs) {
  // `GET {results}/v1/events?ids=a,b` streams several jobs on one connection (browsers allow ~6 per host).
  const bases = new Set(jobs.map((job) => job.events_url.split("/v1/results/")[0]));
  const base = [...bases][0];
  if (bases.size !== 1 || base === jobs[0].events_url) return null;
  return `${base}/v1/events?ids=${jobs.map((job) => encodeURIComponent(job.id)).join(",")}`;
}

async function recover(waiting, reopened) {
  // The stream was refused or ended early: ask for each result once, then listen again for the rest.
  for (const [id, item] of [...waiting]) {
    try {
      const response = await fetch(item.job.result_url, { headers: authHeaders() });
      if (response.status === 200) {
        waiting.delete(id);
        show(item, await response.json());
      } else if (response.status !== 202) {
        const data = await response.json().catch(() => ({}));
        waiting.delete(id);
        settle(item, "failed", `The results service answered ${response.status}: ${data.error || response.statusText}`);
      }
    } catch {
      // unreachable for now: keep waiting, the stream below tries again
    }
  }
  if (!waiting.size) return;
  if (reopened >= REOPEN_LIMIT) {
    waiting.forEach((item) => settle(item, "failed", "No result: the results service cannot be reached. Try again later."));
    return;
  }
  setTimeout(() => listen(waiting, reopened + 1), 2000 * (reopened + 1));
}

// ---- the cards ----

function makeCard(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  const thumb = card.querySelector(".thumb");
  const url = URL.createObjectURL(file);
  thumb.alt = `Your photo ${file.name}`;
  thumb.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  thumb.addEventListener("error", () => {
    URL.revokeObjectURL(url);
    thumb.remove();
    card.querySelector(".thumb-box").append(Object.assign(document.createElement("span"), {
      className: "no-preview", textContent: "No preview",
    }));
  }, { once: true });
  thumb.src = url;
  card.querySelector(".name").textContent = file.name;
  return card;
}

function setState(item, status, text) {
  item.card.dataset.status = status;
  const state = item.card.querySelector(".state");
  state.className = `state ${status}`;
  state.textContent = text;
}

function settle(item, status, text) {
  setState(item, status, text);
  tally[status] += 1;
  if (tally.done + tally.failed + tally.refused === tally.total) {
    const parts = [`${plural(tally.done, "photo")} classified`];
    if (tally.failed) parts.push(`${tally.failed} could not be classified`);
    if (tally.refused) parts.push(`${tally.refused} refused`);
    announce(`${parts.join(", ")}.`);
  }
}

function show(item, result) {
  if (result.status !== "done") {
    settle(item, "failed", `Could not classify: ${result.error || "unknown error"}`);
    return;
  }
  const { card } = item;
  card.dataset.label = result.label;
  settle(item, "done", "");
  const label = Object.assign(document.createElement("strong"), { className: "label", textContent: pretty(result.label) });
  const score = Object.assign(document.createElement("span"), { className: "score", textContent: percent(result.score) });
  card.querySelector(".state").append(label, " ", score);
  const top = card.querySelector(".top");
  for (const guess of (result.top || []).slice(0, 5)) top.append(topItem(guess));
  top.hidden = !top.children.length;
  offerFeedback(item, result);
  refreshModels(item.job.result_url.split("/v1/results/")[0]);
}

// ---- the models panel: how each model does on live traffic (the primary, and a shadow model if one runs) ----

let modelsTimer = null;

function refreshModels(base) {
  if (modelsTimer) return;
  modelsTimer = setTimeout(async () => {
    modelsTimer = null;
    try {
      const response = await fetch(`${base}/v1/models`, { headers: authHeaders() });
      if (response.ok) showModels(await response.json());
    } catch {
      // the panel keeps its last figures; the next result tries again
    }
  }, MODELS_REFRESH_MS);
}

function showModels(report) {
  const rows = (report.models || []).map((m) => {
    const tr = document.createElement("tr");
    const cells = [
      m.role,
      [m.model.name, m.model.version && `(${m.model.version.slice(0, 12)})`].filter(Boolean).join(" "),
      String(m.images),
      String(m.failures),
      m.top1_agreement === null ? "–" : `${percent(m.top1_agreement)} of ${m.compared}`,
      `${ms(m.inference_ms.p50)} / ${ms(m.inference_ms.p99)}`,
      `${ms(m.round_trip_ms.p50)} / ${ms(m.round_trip_ms.p99)}`,
    ];
    for (const text of cells) tr.append(Object.assign(document.createElement("td"), { textContent: text }));
    return tr;
  });
  modelsPanel.querySelector("tbody").replaceChildren(...rows);
  modelsPanel.hidden = !rows.length;
}

function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

function topItem(guess) {
  const li = document.createElement("li");
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.setAttribute("aria-hidden", "true"); // the text says the same
  const fill = document.createElement("span");
  fill.style.width = percent(guess.score);
  bar.append(fill);
  li.append(
    Object.assign(document.createElement("span"), { className: "top-label", textContent: pretty(guess.label) }),
    Object.assign(document.createElement("span"), { className: "top-score", textContent: percent(guess.score) }),
    bar,
  );
  return li;
}

function offerFeedback(item, result) {
  const details = item.card.querySelector(".feedback");
  const feedback = details.querySelector("form");
  const said = item.card.querySelector(".feedback-state");
  details.hidden = false;
  feedback.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = feedback.querySelector("button");
    const text = feedback.elements.report.value.trim() || "(no suggestion)";
    const body = new FormData();
    body.append("report", `${item.job.filename}: labelled ${result.label} (${percent(result.score)}); the user says it is wrong: ${text}`);
    body.append("job_id", item.job.id);
    button.disabled = true;
    try {
      const response = await fetch("/feedback", { method: "POST", body, headers: authHeaders() });
      const data = await response.json().catch(() => ({}));
      if (response.ok) {
        details.hidden = true;
        said.textContent = "Feedback sent. Thank you!";
        return;
      }
      said.textContent = `Feedback not sent (${response.status}): ${data.reason || data.error || response.statusText}`;
    } catch (error) {
      said.textContent = `Feedback not sent: ${error.message}`;
    }
    button.disabled = false;
  });
}

// ---- small helpers ----

function announce(text) {
  statusLine.textContent = text;
}

function authHeaders() {
  const key = keyInput.value.trim();
  sessionStorage.setItem("apiKey", key);
  return key ? { "X-API-Key": key } : {};
}

function withKey(url) {
  // EventSource cannot send headers; the services accept the key as a query parameter instead.
  const key = keyInput.value.trim();
  return key ? `${url}${url.includes("?") ? "&" : "?"}api_key=${encodeURIComponent(key)}` : url;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function percent(score) {
  return `${(Number(score) * 100).toFixed(1)}%`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function pretty(label) {
  return String(label).replaceAll("_", " ");
}
