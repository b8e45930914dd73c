// The dashboard's script: the key, live updates from the event streams, the forms, the drop zone.
// Plain JavaScript, no build step; every request goes to this server.
"use strict";

const KEY = "convlab-api-key";

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function api(path, options = {}) {
  return fetch(path, { ...options, headers: headers(options.headers) });
}

const content = () => document.getElementById("content");

// A page's content, fetched again with the key (the server renders it; this only swaps it in).
async function reload(url = content().dataset.url) {
  const response = await api(url, { headers: { "X-Fragment": "1" } });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    window.location.reload();
    return;
  }
  if (response.ok) {
    content().innerHTML = await response.text();
    start();
  }
}

function askForKey(form) {
  const error = document.getElementById("key-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("api-key").value.trim());
    const response = await api(content().dataset.url, { headers: { "X-Fragment": "1" } });
    if (!response.ok) {
      sessionStorage.removeItem(KEY);
      error.textContent = "That key was not accepted.";
      return;
    }
    content().innerHTML = await response.text();
    start();
  });
  if (sessionStorage.getItem(KEY)) reload();
}

// Server-Sent Events read with fetch, which (unlike EventSource) can send the key; resumed
// with Last-Event-ID until the stream says it is done.
function follow(path, onEvent) {
  let lastId = null;
  let stopped = false;
  const controller = new AbortController();
  async function connect() {
    while (!stopped) {
      try {
        const extra = lastId ? { "Last-Event-ID": lastId } : {};
        const response = await api(path, { headers: extra, signal: controller.signal });
        if (!response.ok) return;
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = parse(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (event.id) lastId = event.id;
            if (event.type && onEvent(event.type, event.data) === false) {
              stopped = true;
              controller.abort();
              return;
            }
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  connect();
  return () => { stopped = true; controller.abort(); };
}

function parse(block) {
  const event = { type: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const [field, ...rest] = line.split(":");
    const value = rest.join(":").replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "data") event.data += value;
    else if (field === "id") event.id = value;
  }
  try { event.data = JSON.parse(event.data); } catch (error) { /* a plain string */ }
  return event;
}

// Runs `work` at most every `ms`, and once more after the last call.
function throttle(work, ms) {
  let timer = null;
  let again = false;
  return () => {
    if (timer) { again = true; return; }
    work();
    timer = setTimeout(() => { timer = null; if (again) { again = false; work(); } }, ms);
  };
}

const streams = [];

function stopStreams() {
  while (streams.length) streams.pop()();
}

function experimentsPage() {
  for (const row of document.querySelectorAll("tr[data-running]")) {
    const id = row.dataset.experimentId;
    const bar = row.querySelector("progress");
    streams.push(follow(`/experiments/${id}/events`, (type, data) => {
      if (type === "progress" && bar) {
        bar.value = ((data.epoch - 1) * data.steps + data.step) / (data.epochs * data.steps);
      }
      if (type === "done") { reload(); return false; }
      return true;
    }));
  }
  const form = document.getElementById("submit-form");
  if (form) submitForm(form);
}

function specFrom(form) {
  const spec = {};
  for (const input of form.querySelectorAll("input[type=number]")) {
    if (input.name === "stop_threshold" || input.value === "") continue;
    spec[input.name] = Number(input.value);
  }
  const name = form.elements.name.value.trim();
  if (name) spec.name = name;
  const dense = form.elements.dense_units.value.trim();
  spec.dense_units = dense ? dense.split(",").map((unit) => Number(unit.trim())) : [];
  spec.device = form.elements.device.value;
  const metric = form.elements.stop_metric.value;
  if (metric) spec.stop = { metric, threshold: Number(form.elements.stop_threshold.value) };
  return spec;
}

function showErrors(form, errors) {
  for (const span of form.querySelectorAll(".field-error")) span.textContent = "";
  const general = [];
  for (const error of errors) {
    const loc = error.loc.filter((part) => part !== "body");
    const span = form.querySelector(`.field-error[data-field="${loc[0]}"]`);
    if (span) span.textContent = error.msg;
    else general.push(error.msg);
  }
  document.getElementById("form-error").textContent = general.join("; ");
}

function submitForm(form) {
  const preview = document.getElementById("layer-preview");
  document.getElementById("preview").addEventListener("click", async () => {
    const response = await fetch("/ui/preview", { method: "POST", body: JSON.stringify(specFrom(form)) });
    preview.innerHTML = await response.text();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await api("/experiments", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(specFrom(form)),
    });
    const body = await response.json();
    if (response.status === 202) {
      window.location.assign(`/ui/experiments/${body.id}`);
    } else if (Array.isArray(body.detail)) {
      showErrors(form, body.detail);
    } else {
      showErrors(form, [{ loc: [], msg: body.detail }]);
    }
  });
}

function experimentPage(live) {
  const id = live.dataset.experimentId;
  const refresh = throttle(async () => {
    const response = await api(`/ui/experiments/${id}?part=live`, { headers: { "X-Fragment": "1" } });
    if (response.ok) live.innerHTML = await response.text();
  }, 500);
  streams.push(follow(`/experiments/${id}/events`, (type, data) => {
    if (type === "progress") {
      const bar = document.getElementById("progress");
      const text = document.getElementById("progress-text");
      if (bar) {
        bar.max = data.epochs * data.steps;
        bar.value = (data.epoch - 1) * data.steps + data.step;
        text.textContent = `epoch ${data.epoch} of ${data.epochs}, step ${data.step} of ${data.steps}`;
      } else refresh();
    } else refresh();
    return type !== "done";
  }));
  document.getElementById("cancel").addEventListener("click", async () => {
    await api(`/experiments/${id}/cancel`, { method: "POST" });
    refresh();
  });
  document.getElementById("download").addEventListener("click", async (event) => {
    if (!sessionStorage.getItem(KEY)) return; // The plain link works without a key.
    event.preventDefault();
    const response = await api(`/experiments/${id}/model`);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = `experiment-${id}.keras`;
    link.click();
  });
  dropZone(document.getElementById("dropzone"), id);
}

function dropZone(zone, id) {
  const input = document.getElementById("predict-file");
  const output = document.getElementById("prediction");
  async function classify(file) {
    const response = await api(`/predict?experiment_id=${id}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const body = await response.json();
    if (!response.ok) {
      output.innerHTML = "";
      const error = document.createElement("p");
      error.className = "error";
      error.textContent = typeof body.detail === "string" ? body.detail : "the picture was refused";
      output.append(error);
      return;
    }
    const [prediction] = body.predictions;
    output.innerHTML = `<p>Predicted: <strong id="predicted-class"></strong></p><ol class="bars"></ol>`;
    output.querySelector("#predicted-class").textContent =
      `${prediction.class_name} (${(prediction.confidence * 100).toFixed(1)}%)`;
    const names = JSON.parse(zone.dataset.classNames || "[]");
    prediction.probabilities.forEach((p, index) => {
      const item = document.createElement("li");
      item.className = index === prediction.label ? "bar best" : "bar";
      item.innerHTML = `<span class="bar-label"></span><span class="bar-fill"></span><span class="bar-value"></span>`;
      item.querySelector(".bar-label").textContent = names[index] || index;
      item.querySelector(".bar-fill").style.width = `${(p * 100).toFixed(1)}%`;
      item.querySelector(".bar-value").textContent = `${(p * 100).toFixed(1)}%`;
      output.querySelector("ol").append(item);
    });
  }
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) classify(input.files[0]); });
}

function studyPage(live) {
  const id = live.dataset.studyId;
  // Only the live part is swapped: the stream, and the page around it, stay.
  const refresh = throttle(async () => {
    const response = await api(content().dataset.url, { headers: { "X-Fragment": "1" } });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("study-live");
    if (fresh) live.innerHTML = fresh.innerHTML;
  }, 1000);
  streams.push(follow(`/studies/${id}/events`, (type) => {
    if (type === "status" || type === "end") refresh();
    return type !== "end";
  }));
}

function start() {
  stopStreams();
  const prompt = document.getElementById("key-prompt");
  if (prompt) { askForKey(prompt); return; }
  if (document.getElementById("experiments")) experimentsPage();
  const live = document.getElementById("live");
  if (live) experimentPage(live);
  const study = document.getElementById("study-live");
  if (study) studyPage(study);
}

document.addEventListener("DOMContentLoaded", start);
