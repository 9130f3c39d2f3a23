// attnseg serve: the page's script (no framework, no build step). It talks to the JSON API of attnseg/serve/app.py:
// GET /api/models, POST /api/predict (multipart), POST /api/attention (JSON) for a clicked pixel.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], result: null, ids: null, base: null, query: null, fileName: "image" };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function percent(v) { return (100 * v).toFixed(v < 0.001 ? 2 : 1) + " %"; }

async function apiJSON(response) {
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status} ${response.statusText}`);
  }
  return body;
}

async function loadModels() {
  const body = await apiJSON(await fetch("/api/models"));
  state.models = body.models;
  const select = $("model");
  select.innerHTML = "";
  for (const m of body.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name;
    select.appendChild(option);
  }
  const mb = (body.limits.max_upload_bytes / 1048576).toFixed(0);
  $("limits").textContent = `up to ${mb} MiB and ${(body.limits.max_pixels / 1e6).toFixed(1)} megapixels`;
  describeModel();
}

function describeModel() {
  const m = state.models.find((x) => x.name === $("model").value);
  if (!m) { $("model-info").textContent = ""; return; }
  const instances = m.task === "instances";
  const classifier = m.task === "classification";
  const parts = [m.model, instances ? `instances of ${m.classes.slice(1).join(", ")}`
    : classifier ? `classifier of ${m.classes.length} classes` : `${m.classes.length} classes`];
  if (m.num_params) parts.push(`${(m.num_params / 1e6).toFixed(2)} M parameters`);
  if (m.metrics && m.metrics.mIoU !== undefined) parts.push(`val mIoU ${(100 * m.metrics.mIoU).toFixed(2)} %`);
  if (m.metrics && m.metrics.DSB !== undefined) parts.push(`val DSB score ${m.metrics.DSB.toFixed(3)}`);
  if (m.metrics && m.metrics.accuracy !== undefined) parts.push(`val accuracy ${(100 * m.metrics.accuracy).toFixed(2)} %`);
  if (m.step) parts.push(`${m.step} steps`);
  parts.push(m.backend, m.precision, m.inference);
  $("model-info").textContent = parts.join(" · ");
}

function decodeBase64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

async function predict(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") {
    showError(`${file.name} is not an image (${file.type})`);
    return;
  }
  showError("");
  state.fileName = (file.name || "image").replace(/\.[^.]*$/, "");
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  form.append("model", $("model").value);
  form.append("raw_ids", "true");
  form.append("attention", "true");
  $("timing").textContent = "running…";
  const t0 = performance.now();
  let body;
  try {
    body = await apiJSON(await fetch("/api/predict", { method: "POST", body: form }));
  } catch (e) {
    $("timing").textContent = "";
    showError(e.message);
    return;
  }
  const roundTrip = performance.now() - t0;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    showError("the browser cannot draw this image, but the server predicted it: the downloads below still work");
  }
  state.result = body;
  if (body.kind === "classification") {
    state.ids = null;   // one class for the whole image: no map to overlay
  } else {
    const raw = decodeBase64(body.ids_raw);
    // instance models send uint16 little-endian ids (one per instance), semantic models uint8 class ids
    state.ids = body.kind === "instance" ? new Uint16Array(raw.buffer, 0, raw.length / 2) : raw;
  }
  state.query = null;
  setupCanvas(bitmap, body);
  $("timing").textContent = `model ${body.timing_ms.inference.toFixed(0)} ms · server ${body.timing_ms.server.toFixed(0)} ms` +
    ` · round trip ${roundTrip.toFixed(0)} ms · ${body.width}×${body.height} · ${body.inference}`;
  renderLegend(body);
  renderDownloads(body);
  const found = body.kind === "instance" ? [`${body.count} instances found.`]
    : body.kind === "classification" ? [`predicted class ${body.class} (${percent(body.score)}).`] : [];
  $("prediction").textContent = body.kind === "classification" ? `${body.class} · ${percent(body.score)}` : "";
  $("prediction").hidden = body.kind !== "classification";
  // one class for the whole picture: nothing to overlay, so no opacity to set
  $("opacity").closest("label").hidden = $("opacity-value").hidden = body.kind === "classification";
  $("notes").textContent = found.concat(body.notes || []).join(" ");
  renderAttention(body.attention, false);
  $("result").hidden = false;
}

function setupCanvas(bitmap, body) {
  const canvas = $("canvas");
  canvas.width = body.width;
  canvas.height = body.height;
  // small pictures are shown enlarged (up to 4x, nearest neighbour), large ones fit the column
  const room = $("left").clientWidth - 4;
  canvas.style.width = Math.min(room, 4 * body.width) + "px";
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#888";
  ctx.fillRect(0, 0, body.width, body.height);
  if (bitmap) ctx.drawImage(bitmap, 0, 0, body.width, body.height);
  state.base = ctx.getImageData(0, 0, body.width, body.height);
  composite();
}

function overlayPixels(alpha) {
  const { base, ids, result } = state;
  if (!ids) return base;   // a classifier: the picture itself
  const out = new ImageData(base.width, base.height);
  const src = base.data, dst = out.data, pal = result.palette;
  for (let i = 0, p = 0; i < ids.length; i++, p += 4) {
    const c = pal[ids[i]];
    if (c) {
      dst[p] = Math.round((1 - alpha) * src[p] + alpha * c[0]);
      dst[p + 1] = Math.round((1 - alpha) * src[p + 1] + alpha * c[1]);
      dst[p + 2] = Math.round((1 - alpha) * src[p + 2] + alpha * c[2]);
    } else {
      dst[p] = src[p]; dst[p + 1] = src[p + 1]; dst[p + 2] = src[p + 2];
    }
    dst[p + 3] = 255;
  }
  return out;
}

function composite() {
  if (!state.result) return;
  const alpha = parseFloat($("opacity").value);
  $("opacity-value").textContent = alpha.toFixed(2);
  const ctx = $("canvas").getContext("2d");
  ctx.putImageData(overlayPixels(alpha), 0, 0);
  if (state.query) {
    const [y, x] = state.query;
    const r = Math.max(4, Math.round(Math.min(state.result.width, state.result.height) / 60));
    ctx.lineWidth = Math.max(1.5, r / 3);
    ctx.strokeStyle = "#ff2828";
    ctx.beginPath(); ctx.arc(x + 0.5, y + 0.5, r, 0, 2 * Math.PI); ctx.stroke();
  }
}

function pixelAt(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  // the content box: the border is outside the picture
  const x = Math.floor((event.clientX - rect.left - canvas.clientLeft) * canvas.width / canvas.clientWidth);
  const y = Math.floor((event.clientY - rect.top - canvas.clientTop) * canvas.height / canvas.clientHeight);
  if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return null;
  return [y, x];
}

function onHover(event) {
  if (!state.result) return;
  const p = pixelAt(event);
  for (const row of document.querySelectorAll("#legend tr.hover")) row.classList.remove("hover");
  if (!p) return;
  if (!state.ids) {
    $("hover").textContent = `(${p[0]}, ${p[1]}): the whole image is class ${state.result.class}`;
    return;
  }
  const id = state.ids[p[0] * state.result.width + p[1]];
  const name = state.result.classes[id];
  $("hover").textContent = state.result.kind === "instance"
    ? `(${p[0]}, ${p[1]}): ${id ? name : "background"}` : `(${p[0]}, ${p[1]}): ${id} ${name}`;
  const row = document.querySelector(`#legend tr[data-id="${id}"]`);
  if (row) row.classList.add("hover");
}

async function onClick(event) {
  if (!state.result) return;
  const p = pixelAt(event);
  if (!p) return;
  state.query = p;
  composite();
  $("query-label").textContent = `of pixel (${p[0]}, ${p[1]})`;
  if (!state.result.attention.needs_query) {
    $("attention-notes").textContent = "this model's attention pictures do not depend on a pixel: they are shown below";
    return;
  }
  $("attention-notes").textContent = "drawing…";
  try {
    const body = await apiJSON(await fetch("/api/attention", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: state.result.token, y: p[0], x: p[1] }),
    }));
    renderAttention(body, true);
  } catch (e) {
    showError(e.message);
    $("attention-notes").textContent = "";
  }
}

function renderLegend(body) {
  const head = body.kind === "instance" ? ["instance", "share", "score"]
    : body.kind === "classification" ? ["class", "probability", ""] : ["class", "share", "confidence"];
  document.querySelector("#legend thead").innerHTML = "<tr><th></th>" + head.map((h) => `<th>${h}</th>`).join("") + "</tr>";
  const tbody = document.querySelector("#legend tbody");
  tbody.innerHTML = "";
  for (const s of body.stats) {
    const tr = document.createElement("tr");
    tr.dataset.id = s.id;
    const conf = body.kind !== "classification" && Number.isFinite(s.confidence) ? s.confidence.toFixed(2) : "";
    tr.innerHTML = `<td><span class="swatch" style="background: rgb(${s.color.join(",")})"></span></td>` +
      `<td></td><td>${percent(s.share)}</td><td>${conf}</td>`;
    tr.children[1].textContent = body.kind === "semantic" ? `${s.id} ${s.name}` : s.name;
    tbody.appendChild(tr);
  }
}

function renderDownloads(body) {
  $("dl-ids").hidden = body.kind === "classification";   // a classifier has no id map
  $("dl-overlay").hidden = body.kind === "classification";
  if (body.kind !== "classification") $("dl-ids").href = "data:image/png;base64," + body.ids_png;
  $("dl-ids").download = body.kind === "instance" ? `${state.fileName}_instances.png` : `${state.fileName}_ids.png`;
  const off = document.createElement("canvas");
  off.width = body.width; off.height = body.height;
  const updateOverlay = () => {
    off.getContext("2d").putImageData(overlayPixels(parseFloat($("opacity").value)), 0, 0);
    $("dl-overlay").href = off.toDataURL("image/png");
  };
  $("dl-overlay").onclick = updateOverlay;
  updateOverlay();
  $("dl-overlay").download = `${state.fileName}_overlay.png`;
  const summary = body.kind === "classification"
    ? { kind: "classification", model: body.model, class: body.class, label: body.label, score: body.score,
        probs: body.probs, top: body.top, input_size: body.input_size, timing_ms: body.timing_ms }
    : body.kind === "instance"
    ? { kind: "instance", model: body.model, width: body.width, height: body.height, classes: body.instance_classes,
        count: body.count, instances: body.instances, timing_ms: body.timing_ms, inference: body.inference }
    : { model: body.model, width: body.width, height: body.height, classes: body.classes,
        palette: body.palette, stats: body.stats, timing_ms: body.timing_ms, inference: body.inference };
  const blob = new Blob([JSON.stringify(summary, null, 1)], { type: "application/json" });
  $("dl-json").href = URL.createObjectURL(blob);
  $("dl-json").download = `${state.fileName}.json`;
}

function figure(picture) {
  const fig = document.createElement("figure");
  fig.dataset.name = picture.name;
  if (picture.query) fig.dataset.query = picture.query.join(",");
  const img = document.createElement("img");
  img.src = "data:image/png;base64," + picture.png;
  img.alt = picture.title;
  const cap = document.createElement("figcaption");
  cap.textContent = picture.title;
  fig.append(img);
  if (picture.gif) {
    // a sequence (recurrent instance models): the strip, then the same steps animated
    const anim = document.createElement("img");
    anim.className = "animation";
    anim.src = "data:image/gif;base64," + picture.gif;
    anim.alt = picture.title + " (animated)";
    fig.append(anim);
  }
  fig.append(cap);
  return fig;
}

function renderAttention(attention, queryOnly) {
  const box = $("attention");
  if (queryOnly) {
    for (const f of box.querySelectorAll("figure[data-query]")) f.remove();
  } else {
    box.innerHTML = "";
  }
  const pictures = attention.pictures || [];
  // query pictures first: they answer the click
  const first = box.firstChild;
  for (const p of pictures) {
    if (p.query) box.insertBefore(figure(p), first); else box.appendChild(figure(p));
  }
  const notes = (attention.notes || []).slice();
  if (!queryOnly && attention.needs_query) notes.push("click a pixel of the picture to see what it attends to");
  if (!pictures.length && !notes.length) notes.push("no attention pictures for this model");
  $("attention-notes").textContent = notes.join(" ");
}

function setupInputs() {
  $("model").addEventListener("change", describeModel);
  $("file").addEventListener("change", (e) => predict(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    for (const item of e.clipboardData.items) {
      if (item.type.startsWith("image/")) { predict(item.getAsFile()); e.preventDefault(); return; }
    }
  });
  $("opacity").addEventListener("input", composite);
  $("canvas").addEventListener("mousemove", onHover);
  $("canvas").addEventListener("click", onClick);
}

setupInputs();
loadModels().catch((e) => showError(`cannot list the models: ${e.message}`));
