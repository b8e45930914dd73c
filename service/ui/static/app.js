// The dashboard's script: the key, live updates, the forms, the drop zone. Plain JavaScript,
// no build step; every request goes to this server.
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

function fragment(url) {
  return api(url, { headers: { "X-Fragment": "1" } });
}

async function message(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (error) {
    return `${response.status} ${response.statusText}`;
  }
}

// A function that runs `work` for the latest call only: an answer that arrives after a newer
// request was sent is dropped, so a slow early refresh never overwrites a later one.
function latest(work) {
  let sequence = 0;
  return async (...args) => {
    const mine = ++sequence;
    const result = await work(...args);
    return mine === sequence ? result : null;
  };
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

// The key prompt: only a 401 means a wrong key; anything else is said as it is.
function askForKey(form) {
  const error = document.getElementById("key-error");
  const open = async () => {
    const response = await fragment(content().dataset.url);
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      error.textContent = "That key was not accepted.";
      return;
    }
    if (!response.ok) {
      error.textContent = await message(response);
      return;
    }
    content().innerHTML = await response.text();
    start();
  };
  form.querySelector("button").disabled = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("api-key").value.trim());
    open();
  });
  if (sessionStorage.getItem(KEY)) open();
}

// Server-Sent Events read with fetch, which (unlike EventSource) can send the key. Resumed
// with Last-Event-ID after a drop, with a growing pause; stops when `onEvent` returns false.
function follow(path, onEvent) {
  let lastId = null;
  let stopped = false;
  let pause = 1000;
  const controller = new AbortController();
  const handle = (event) => {
    try {
      if (onEvent(event.type, event.data) === false) stop();
    } catch (error) {
      console.error(error); // A bug in a handler must not turn into a reconnect loop.
    }
  };
  const stop = () => { stopped = true; controller.abort(); };
  (async () => {
    while (!stopped) {
      try {
        const extra = lastId ? { "Last-Event-ID": lastId } : {};
        const response = await api(path, { headers: extra, signal: controller.signal });
        if (response.status === 401 || response.status === 404) return;
        if (response.ok) {
          pause = 1000;
          await read(response, (event) => {
            if (event.id) lastId = event.id;
            handle(event);
          }, () => stopped);
        }
      } catch (error) {
        if (stopped) return;
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 30000);
    }
  })();
  return stop;
}

async function read(response, dispatch, stopped) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (!stopped()) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parse(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) dispatch(event);
    }
  }
}

// One event block, or null for a block without data (the server's keep-alive comments).
function parse(block) {
  const event = { type: "message", data: null };
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "data") event.data = event.data === null ? value : `${event.data}\n${value}`;
    else if (field === "id") event.id = value;
  }
  if (event.data === null) return null;
  try { event.data = JSON.parse(event.data); } catch (error) { /* plain text */ }
  return event;
}

const stoppers = [];

function stopAll() {
  while (stoppers.length) stoppers.pop()();
}

// Swaps the element `id` for its copy in a fresh fragment of the page; the rest stays.
async function swap(id, url = content().dataset.url) {
  const response = await fragment(url);
  if (!response.ok) return false;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.getElementById(id);
  const current = document.getElementById(id);
  if (fresh && current) current.replaceWith(fresh);
  return Boolean(fresh);
}

// The table's queued and running rows, followed through one multiplexed stream (GET /events):
// a stream per row would hold one of the six connections a browser keeps to a host.
function experimentsPage() {
  let stop = null;
  let following = "";
  const redraw = latest(() => swap("experiments"));
  const refresh = throttle(async () => { if (await redraw()) watch(); }, 1000);
  function moved(data) {
    const bar = document.querySelector(`tr[data-experiment-id="${data.experiment_id}"] progress`);
    if (!bar || !(data.steps > 0)) { refresh(); return; }
    bar.max = 1;
    bar.value = ((data.epoch - 1) * data.steps + data.step) / (data.epochs * data.steps);
  }
  function watch() {
    const rows = document.querySelectorAll("#experiments tr[data-live]");
    const ids = [...rows].map((row) => row.dataset.experimentId);
    if (ids.join(",") === following) return;
    if (stop) stop();
    following = ids.join(",");
    stop = ids.length === 0 ? null : follow(
      `/events?${ids.map((id) => `experiment_id=${id}`).join("&")}`,
      (type, data) => {
        if (type === "progress") moved(data);
        else if (type === "status" || type === "done") refresh();
        return type !== "end";
      },
    );
  }
  watch();
  stoppers.push(() => { if (stop) stop(); });
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
  if (metric) {
    spec.stop = { metric };
    // Left out when empty, so the API says it is missing rather than reading it as 0.
    const threshold = form.elements.stop_threshold.value;
    if (threshold !== "") spec.stop.threshold = Number(threshold);
  }
  return spec;
}

function showErrors(form, errors) {
  for (const span of form.querySelectorAll(".field-error")) span.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  const general = [];
  for (const error of errors) {
    const loc = error.loc.filter((part) => part !== "body");
    const span = form.querySelector(`.field-error[data-field="${loc[0]}"]`);
    if (span) {
      span.textContent = error.msg.replace(/^Value error, /, "");
      const input = document.getElementById(span.dataset.input);
      if (input) input.setAttribute("aria-invalid", "true");
    } else general.push(error.msg.replace(/^Value error, /, ""));
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
    if (response.status === 202) {
      window.location.assign(`/ui/experiments/${(await response.json()).id}`);
      return;
    }
    let detail;
    try { detail = (await response.json()).detail; } catch (error) { detail = response.statusText; }
    showErrors(form, Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]);
  });
}

function experimentPage(live) {
  const id = live.dataset.experimentId;
  const url = `/ui/experiments/${id}?part=live`;
  const replace = latest(async () => {
    const response = await fragment(url);
    return response.ok ? response.text() : null;
  });
  const refresh = throttle(async () => {
    const html = await replace();
    if (html === null) return;
    live.innerHTML = html;
    bindControls(live, id, refresh);
  }, 500);
  bindControls(live, id, refresh);
  if (live.dataset.final === "true") return; // Nothing will change: no stream.
  stoppers.push(follow(`/experiments/${id}/events`, (type, data) => {
    const bar = document.getElementById("progress");
    if (type === "progress" && bar && data.steps > 0) {
      bar.max = data.epochs * data.steps;
      bar.value = (data.epoch - 1) * data.steps + data.step;
      document.getElementById("progress-text").textContent =
        `epoch ${data.epoch} of ${data.epochs}, step ${data.step} of ${data.steps}`;
    } else {
      refresh();
    }
    return type !== "done";
  }));
}

// The buttons and the drop zone, bound again each time the live part is redrawn.
function bindControls(live, id, refresh) {
  const cancel = document.getElementById("cancel");
  const note = document.getElementById("control-error");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      const response = await api(`/experiments/${id}/cancel`, { method: "POST" });
      note.textContent = response.ok ? "" : await message(response);
      refresh();
    });
  }
  const download = document.getElementById("download");
  if (download) {
    download.addEventListener("click", async (event) => {
      if (!sessionStorage.getItem(KEY)) return; // The plain link works without a key.
      event.preventDefault();
      const response = await api(`/experiments/${id}/model`);
      if (!response.ok) { note.textContent = await message(response); return; }
      const link = document.createElement("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = `experiment-${id}.keras`;
      link.click();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    });
  }
  const zone = document.getElementById("dropzone");
  if (zone) dropZone(zone, id);
}

function dropZone(zone, id) {
  const input = document.getElementById("predict-file");
  const output = document.getElementById("prediction");
  const names = JSON.parse(zone.dataset.classNames || "[]");
  const ask = latest((file) => api(`/predict?experiment_id=${id}`, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  }));
  async function classify(file) {
    const response = await ask(file);
    if (response === null) return; // A newer picture was dropped meanwhile.
    output.innerHTML = "";
    if (!response.ok) {
      const error = document.createElement("p");
      error.className = "error";
      error.textContent = await message(response);
      output.append(error);
      return;
    }
    const [prediction] = (await response.json()).predictions;
    const heading = document.createElement("p");
    heading.innerHTML = "Predicted: <strong id=\"predicted-class\"></strong>";
    heading.querySelector("strong").textContent =
      `${prediction.class_name} (${(prediction.confidence * 100).toFixed(1)}%)`;
    const bars = document.createElement("ol");
    bars.className = "bars";
    prediction.probabilities.forEach((p, index) => {
      const item = document.createElement("li");
      item.className = index === prediction.label ? "bar best" : "bar";
      item.innerHTML = "<span class=\"bar-label\"></span><span class=\"bar-fill\"></span><span class=\"bar-value\"></span>";
      item.querySelector(".bar-label").textContent = names[index] || index;
      item.querySelector(".bar-fill").style.width = `${(p * 100).toFixed(1)}%`;
      item.querySelector(".bar-value").textContent = `${(p * 100).toFixed(1)}%`;
      bars.append(item);
    });
    output.append(heading, bars);
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
  const refresh = throttle(latest(() => swap("study-live")), 1000);
  stoppers.push(follow(`/studies/${id}/events`, (type) => {
    if (type === "status" || type === "end") refresh();
    return type !== "end";
  }));
}

function start() {
  stopAll();
  const prompt = document.getElementById("key-prompt");
  if (prompt) { askForKey(prompt); return; }
  if (document.getElementById("experiments")) experimentsPage();
  const live = document.getElementById("live");
  if (live) experimentPage(live);
  const study = document.getElementById("study-live");
  if (study) studyPage(study);
}

document.addEventListener("DOMContentLoaded", start);
