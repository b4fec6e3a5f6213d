// The upload page: POST the photos to /v1/images, then follow each job's result by server-sent events.
"use strict";

const form = document.getElementById("upload-form");
const input = document.getElementById("file");
const dropZone = document.getElementById("drop-zone");
const chosenText = document.getElementById("chosen");
const keyInput = document.getElementById("api-key");
const submit = document.getElementById("submit");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const template = document.getElementById("card-template");

let chosen = [];
keyInput.value = sessionStorage.getItem("apiKey") || "";

function announce(text) {
  statusLine.textContent = text;
}

function choose(files) {
  chosen = Array.from(files);
  chosenText.textContent = chosen.length ? `${chosen.length} photo(s) chosen: ${chosen.map((f) => f.name).join(", ")}` : "";
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

input.addEventListener("change", () => choose(input.files));
for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (event) => { event.preventDefault(); dropZone.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, () => dropZone.classList.remove("over"));
}
dropZone.addEventListener("drop", (event) => { event.preventDefault(); choose(event.dataTransfer.files); });

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!chosen.length) {
    announce("Choose or drop at least one photo first.");
    return;
  }
  await upload(chosen);
});

async function upload(files) {
  const body = new FormData();
  for (const file of files) body.append("file", file, file.name);
  submit.disabled = true;
  announce(`Uploading ${files.length} photo(s)…`);
  try {
    const response = await fetch("/v1/images", { method: "POST", body, headers: authHeaders() });
    const data = await response.json().catch(() => ({}));
    if (response.status !== 202) {
      const who = data.filename ? `${data.filename}: ` : "";
      announce(`Not accepted (${response.status}). ${who}${data.reason || data.error || response.statusText}`);
      return;
    }
    data.jobs.forEach((job, i) => follow(job, files[i]));
    announce(`${data.jobs.length} photo(s) accepted; their labels appear below as they are ready.`);
    choose([]);
    form.reset();
  } catch (error) {
    announce(`Upload failed: ${error.message}`);
  } finally {
    submit.disabled = false;
  }
}

function makeCard(job, file) {
  const card = template.content.firstElementChild.cloneNode(true);
  const thumb = card.querySelector(".thumb");
  thumb.src = URL.createObjectURL(file);
  thumb.alt = `Your photo ${job.filename}`;
  thumb.addEventListener("load", () => URL.revokeObjectURL(thumb.src), { once: true });
  card.querySelector(".name").textContent = job.filename;
  results.prepend(card);
  return card;
}

function follow(job, file) {
  const card = makeCard(job, file);
  const state = card.querySelector(".state");
  const source = new EventSource(withKey(job.events_url));
  source.addEventListener("result", (event) => {
    source.close(); // the stream ends after its one result; without this EventSource would reconnect
    show(card, job, JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) state.textContent = "Waiting for the results service…";
  });
}

function show(card, job, result) {
  const state = card.querySelector(".state");
  if (result.status !== "done") {
    state.textContent = `Could not classify: ${result.error || "unknown error"}`;
    state.className = "state failed";
    return;
  }
  state.textContent = `${pretty(result.label)} (${(result.score * 100).toFixed(1)} %)`;
  state.className = "state done";
  const top = card.querySelector(".top");
  for (const item of (result.top || []).slice(0, 5)) {
    const li = document.createElement("li");
    const meter = document.createElement("meter");
    meter.min = 0; meter.max = 1; meter.value = item.score;
    meter.setAttribute("aria-label", `${pretty(item.label)} score`);
    li.textContent = `${pretty(item.label)}: ${(item.score * 100).toFixed(1)} %`;
    li.append(meter);
    top.append(li);
  }
  offerFeedback(card, job, result);
}

function offerFeedback(card, job, result) {
  const feedback = card.querySelector(".feedback");
  const said = feedback.querySelector(".feedback-state");
  feedback.hidden = false;
  feedback.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = feedback.elements.report.value.trim();
    const body = new FormData();
    body.append("report", `${job.filename}: labelled ${result.label}; the user says: ${text}`);
    body.append("job_id", job.id);
    try {
      const response = await fetch("/feedback", { method: "POST", body, headers: authHeaders() });
      said.textContent = response.ok ? "Thank you!" : `Not sent (${response.status}).`;
      if (response.ok) feedback.querySelector("button").disabled = true;
    } catch (error) {
      said.textContent = `Not sent: ${error.message}`;
    }
  });
}

function pretty(label) {
  return String(label).replaceAll("_", " ");
}
