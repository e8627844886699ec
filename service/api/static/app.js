// The cxr-covid web page: each chosen file goes to POST /v1/classify?heatmap=true on this server; the
// answer is shown with its class activation map (CAM) over the X-ray. Plain browser JavaScript with no
// dependencies and no build step, so the page works offline and can be read as it is served.
// Everything from the server or the user (file names, labels, problem details) goes into textContent,
// never innerHTML.
"use strict";

const KEY_STORE = "cxr.apiKey";
// Two uploads in flight overlap one upload with one inference, without flooding the server's bounded
// queue (and earning 503s) when someone drops a folder of files.
const PARALLEL = 2;

const $ = (selector, root = document) => root.querySelector(selector);
const queue = [];
const objectUrls = new Set();
let active = 0;
let models = new Map(); // "name/version" -> the /v1/models entry (labels, positive label, outputs)

// Jet colour map (blue = low, red = high), as `cxr predict --heatmap` draws with OpenCV's COLORMAP_JET.
const JET = Array.from({ length: 256 }, (_, level) => {
  const x = level / 255;
  const channel = (centre) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - centre))));
  return [channel(3), channel(2), channel(1)];
});

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "X-API-Key": key } : {};
}

// The body as application/octet-stream: the server identifies PNG, JPEG and DICOM by their signature,
// so a file whose extension lies still works (the browser's type comes from the extension).
function asOctets(file) {
  return new File([file], file.name, { type: "application/octet-stream" });
}

async function problemOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // Not JSON: a proxy in front of the service answered, or the connection broke mid-body.
  }
  const title = body && typeof body.title === "string" ? body.title : `HTTP ${response.status}`;
  const detail = body && typeof body.detail === "string" ? body.detail : response.statusText || "No details.";
  // The input-domain check's refusal: said plainly, as a refusal rather than a fault, with the checks
  // that refused the image (each with its score and the model card's threshold).
  const refused = Boolean(body && typeof body.type === "string" && body.type.endsWith("/not-a-chest-radiograph"));
  const failed = refused && body.domain && Array.isArray(body.domain.failed) ? body.domain.failed : [];
  return {
    title: refused ? "Not analysed: this does not look like a frontal chest radiograph" : title,
    detail,
    status: response.status,
    refused,
    failed,
  };
}

// What each input-domain check measures (service/imaging/input_check.py); an unknown one shows its name.
const CHECKS = {
  shorter_side: "shorter side of the image (px)",
  colour_fraction: "share of coloured pixels",
  not_radiograph: "view model: p(not a chest radiograph)",
  distance: "feature distance to the training films",
  orientation_confidence: "view model: confidence in the orientation it found",
  upright_after_correction: "view model: p(upright) once turned back",
  lung_largest_area: "largest lung field (share of the image)",
  lung_centre_dx: "lung fields' horizontal distance (share of the width)",
  lung_centre_dy: "lung fields' vertical offset (share of the height)",
};

// Four significant digits (0.999923 reads 0.9999, the card's 0.5 reads 0.5), more where four would show a
// refused score equal to its threshold (0.50004 against 0.5).
function apart(score, threshold) {
  const shown = (value, digits) => String(Number(Number(value).toPrecision(digits)));
  let digits = 4;
  while (digits < 8 && shown(score, digits) === shown(threshold, digits)) digits += 1;
  return [shown(score, digits), shown(threshold, digits)];
}

function showFailedChecks(item, failed) {
  const rows = failed.map((entry) => {
    const row = document.createElement("tr");
    row.dataset.check = String(entry.check);
    row.dataset.score = String(entry.score);
    row.dataset.threshold = String(entry.threshold);
    const [score, threshold] = apart(entry.score, entry.threshold);
    const cells = [
      CHECKS[entry.check] || String(entry.check),
      score,
      `${threshold} (${entry.threshold_name})`,
      String(entry.rule),
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $(".failed-checks tbody", item).replaceChildren(...rows);
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (_) {
    return;
  }
  // A 401 before a key is entered is expected: classification then uses the server default.
  if (!response.ok) return;
  const body = await response.json();
  models = new Map(body.models.map((model) => [`${model.name}/${model.version}`, model]));
  const select = $("#model");
  const chosen = select.value;
  select.replaceChildren(new Option("server default", ""));
  for (const model of body.models) {
    const name = `${model.name} v${model.version}${model.default ? " (default)" : ""}`;
    select.add(new Option(name, `${model.name}/${model.version}`));
  }
  select.value = models.has(chosen) ? chosen : "";
}

function chosenModel() {
  const value = $("#model").value;
  if (value) return models.get(value);
  return [...models.values()].find((model) => model.default);
}

// The threshold applies to the card's positive label; without /v1/models (no key yet) fall back to the
// last label, the convention of every binary card in the repository (["non-covid", "covid"]).
function positiveLabel(result) {
  const model = models.get(`${result.model.name}/${result.model.version}`);
  if (model) return model.positive_label;
  const labels = Object.keys(result.probabilities);
  return labels[labels.length - 1];
}

async function sniff(file) {
  const head = new Uint8Array(await file.slice(0, 132).arrayBuffer());
  if (head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47) return "png";
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return "jpeg";
  if (String.fromCharCode(...head.slice(128, 132)) === "DICM") return "dicom";
  return "unknown";
}

function track(url) {
  objectUrls.add(url);
  return url;
}

function updateStatus() {
  const items = [...document.querySelectorAll(".result")];
  const count = (state) => items.filter((item) => item.dataset.state === state).length;
  const pending = count("pending");
  // A refused image is an answer (not a chest radiograph, so not analysed), not a failure of the service.
  const refused = count("refused");
  $("#status").textContent = items.length
    ? `${items.length} file(s): ${count("done")} classified, ` +
      (refused ? `${refused} not analysed, ` : "") +
      `${count("error")} failed` +
      (pending ? `, ${pending} in progress` : "")
    : "";
}

function showProblem(item, problem) {
  // A refused image keeps its thumbnail beside the reason; a failed one shows no image (style.css).
  item.dataset.state = problem.refused ? "refused" : "error";
  item.dataset.refused = problem.refused ? "true" : "false";
  showFailedChecks(item, problem.failed || []);
  $(".problem-title", item).textContent = problem.title;
  $(".problem-status", item).textContent = problem.status ? `(HTTP ${problem.status})` : "";
  $(".problem-detail", item).textContent = problem.detail;
}

// Browsers cannot show DICOM; /v1/decoded returns the grayscale image the model saw, on the heatmap's
// pixel grid. Also the fallback for a PNG or JPEG the browser cannot draw.
async function loadDecoded(job) {
  const img = $(".xray", job.item);
  let response;
  try {
    response = await fetch("/v1/decoded", { method: "POST", body: asOctets(job.file), headers: authHeaders() });
  } catch (_) {
    return;
  }
  if (response.ok) img.src = track(URL.createObjectURL(await response.blob()));
}

function drawHeatmap(item, heatmap) {
  const canvas = $(".cam", item);
  const source = new Image();
  source.onload = () => {
    canvas.width = heatmap.width;
    canvas.height = heatmap.height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(source, 0, 0);
    const pixels = context.getImageData(0, 0, heatmap.width, heatmap.height);
    const data = pixels.data;
    for (let i = 0; i < data.length; i += 4) {
      const level = data[i]; // grey PNG: 255 * CAM / max CAM, zero outside the lung crop
      const [red, green, blue] = JET[level];
      data[i] = red;
      data[i + 1] = green;
      data[i + 2] = blue;
      // Low activation fades out so the anatomy stays visible; the slider scales the rest.
      data[i + 3] = Math.min(255, Math.round(level * 1.6));
    }
    context.putImageData(pixels, 0, 0);
    item.classList.add("has-cam");
  };
  source.src = `data:${heatmap.media_type};base64,${heatmap.data}`;
}

function showResult(job, result, roundTripMs) {
  const { item } = job;
  const positive = positiveLabel(result);
  const probability = result.probabilities[positive];
  $(".label", item).textContent = result.label;
  item.classList.toggle("is-positive", result.label === positive);
  $(".positive", item).textContent = positive;
  $(".prob", item).textContent = probability.toFixed(4);
  $(".thr", item).textContent = result.threshold.toFixed(4);
  const gauge = $(".gauge", item);
  $(".fill", gauge).style.width = `${(probability * 100).toFixed(2)}%`;
  $(".threshold", gauge).style.left = `${(result.threshold * 100).toFixed(2)}%`;
  gauge.setAttribute("aria-valuenow", String(probability));
  gauge.setAttribute("aria-valuetext", `p(${positive}) ${probability.toFixed(4)}, threshold ${result.threshold}`);

  const model = $(".model", item);
  model.textContent = `${result.model.name} v${result.model.version} (sha256 ${result.model.sha256.slice(0, 12)}…)`;
  model.title = result.model.sha256;
  const timing = result.timing;
  $(".timing", item).textContent =
    `${timing.total_ms.toFixed(1)} ms on the server (queue ${timing.queue_ms.toFixed(1)}, ` +
    `inference ${timing.inference_ms.toFixed(1)}); ${roundTripMs.toFixed(0)} ms round trip`;
  const image = result.image;
  $(".image", item).textContent =
    `${image.format.toUpperCase()} ${image.width}×${image.height}, lung crop: ${image.lung_crop}`;
  const flags = $(".flags", item);
  // Flags describe the input (e.g. DICOM view position); a "warning" one says the model may not apply.
  for (const [name, value] of Object.entries(result.flags || {})) {
    const flag = document.createElement("li");
    // "domain": the film was turned or inverted and corrected, or (domain_policy=flag) is not a chest film.
    const warning = name === "warning" || name === "domain";
    flag.textContent = warning ? `Warning: ${value}` : `${name}: ${value}`;
    flag.classList.toggle("warning", warning);
    flags.append(flag);
  }

  // The heatmap is registered to the decoded image (same aspect ratio as the upload, shorter side at
  // most 320 px): stretching both layers over one box of that aspect ratio overlays them exactly.
  const heatmap = result.heatmap;
  const stage = $(".stage", item);
  stage.style.aspectRatio = heatmap ? `${heatmap.width} / ${heatmap.height}` : `${image.width} / ${image.height}`;
  stage.classList.add("registered");
  if (heatmap) drawHeatmap(item, heatmap);
  if (image.format === "dicom" && !job.decodedRequested) {
    job.decodedRequested = true;
    loadDecoded(job);
  }
  item.dataset.label = result.label;
  item.dataset.probability = String(probability);
  item.dataset.state = "done";
}

async function classify(job) {
  const params = new URLSearchParams();
  const model = job.model;
  if (model) {
    params.set("model", model.name);
    params.set("version", model.version);
  }
  // Ask for the CAM unless the model is known to have none (the API answers 422 then).
  if (!model || model.outputs.includes("cam")) params.set("heatmap", "true");
  const form = new FormData();
  form.append("file", asOctets(job.file));
  let response;
  try {
    response = await fetch(`/v1/classify?${params}`, { method: "POST", body: form, headers: authHeaders() });
  } catch (error) {
    showProblem(job.item, { title: "Network error", detail: `The server could not be reached: ${error.message}` });
    return;
  }
  if (!response.ok) {
    showProblem(job.item, await problemOf(response));
    return;
  }
  const body = await response.json();
  showResult(job, body.results[0], performance.now() - job.sentAt);
  // Time from choosing the file to the result on screen (the next frame), for the browser test.
  requestAnimationFrame(() => {
    job.item.dataset.visibleMs = (performance.now() - job.chosenAt).toFixed(1);
  });
}

function pump() {
  while (active < PARALLEL && queue.length) {
    const job = queue.shift();
    active += 1;
    job.sentAt = performance.now();
    classify(job).finally(() => {
      active -= 1;
      updateStatus();
      pump();
    });
  }
}

async function addFiles(files) {
  const chosenAt = performance.now();
  const template = $("#result-template");
  for (const file of files) {
    const item = template.content.firstElementChild.cloneNode(true);
    $(".file", item).textContent = file.name;
    const img = $(".xray", item);
    img.addEventListener("load", () => item.classList.add("has-image"));
    $("#results").prepend(item);
    const job = { file, item, chosenAt, model: chosenModel(), decodedRequested: false };
    const kind = await sniff(file);
    if (kind === "png" || kind === "jpeg") {
      img.src = track(URL.createObjectURL(file));
      img.addEventListener("error", () => loadDecoded(job), { once: true });
    } else if (kind === "dicom") {
      job.decodedRequested = true; // in parallel with the classification, not after it
      loadDecoded(job);
    }
    queue.push(job);
    pump();
  }
  updateStatus();
}

function setOpacity(value) {
  document.documentElement.style.setProperty("--cam-opacity", String(value / 100));
}

function init() {
  const input = $("#files");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = ""; // choosing the same file again is a new upload
  });
  const drop = $("#drop");
  // Dropping anywhere on the page uploads; without preventDefault the browser would open the file instead.
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) addFiles([...event.dataTransfer.files]);
  });

  const opacity = $("#opacity");
  opacity.addEventListener("input", () => setOpacity(opacity.value));
  setOpacity(opacity.value);

  const key = $("#api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => {
    if (key.value) sessionStorage.setItem(KEY_STORE, key.value);
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();
  });

  $("#clear").addEventListener("click", () => {
    $("#results").replaceChildren();
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls.clear();
    updateStatus();
  });
  loadModels();
}

init();
