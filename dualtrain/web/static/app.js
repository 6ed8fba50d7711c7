// dualtrain.web: runs a run's ONNX export in this browser with onnxruntime-web (WebAssembly).
//
// config.json (written by the server from export/report.json) names each input with the widget
// that feeds it (draw, image, numbers) and each output with the activation that turns it into
// scores (softmax, sigmoid, none). For tests and the curious, the page keeps on `window`:
// modelReady, loadMs (navigation start to model ready), sessionMs, predictionCount,
// lastInput ({name: {shape, dtype, values}}: exactly what the model was fed), lastResult
// ({outputs: {name: {values, probabilities, predicted, label}}, inferenceMs}) and pageError.
import * as ort from "./lib/ort.wasm.min.mjs";

ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no cross-origin isolation is needed
ort.env.wasm.proxy = false;
ort.env.wasm.wasmPaths = new URL("./lib/", document.baseURI).href; // served here: no network

// Each dtype the page builds tensors of, and its typed array.
const TYPED = {
  float32: Float32Array, float64: Float64Array, int8: Int8Array, int16: Int16Array,
  int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array, uint16: Uint16Array,
};
// A drawing is rendered at this many times the model's resolution, then each block of
// SUPERSAMPLE x SUPERSAMPLE pixels is averaged: the ink's coverage of each model pixel, as
// scikit-learn's digits count the ink of 4x4 blocks of a 32x32 bitmap.
const SUPERSAMPLE = 4;
const PAD_SIZE = 280;

window.modelReady = false;
window.predictionCount = 0;
window.lastInput = null;
window.lastResult = null;
window.pageError = null;

let session = null;
let widgets = [];
let queue = Promise.resolve();

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const size = (shape) => shape.reduce((a, b) => a * b, 1);
const fmt = (x, digits = 4) => (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3)
  ? x.toExponential(2) : x.toFixed(digits));

function fail(message) {
  window.pageError = message;
  $("status").textContent = message;
  $("status").classList.add("error");
}

// --- inputs ------------------------------------------------------------------------------------

// A one-channel image drawn with the mouse (or a pen, or a finger), or uploaded.
function drawWidget(port) {
  const [height, width] = port.shape.slice(1);
  const pad = el("canvas", { class: "pad", "data-input": port.name });
  pad.width = PAD_SIZE;
  pad.height = Math.round((PAD_SIZE * height) / width);
  pad.style.height = `${pad.height}px`;
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  const blank = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height); };
  blank();
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = PAD_SIZE / 10;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  const preview = previewCanvas(width, height);
  // The digits fill their 8x8 frame's height, centred: the drawing is fitted the same way.
  const fit = el("input", { type: "checkbox", id: `fit-${port.name}` });
  fit.checked = height === 8 && width === 8;
  const clear = el("button", { type: "button", text: "Clear" });
  const upload = el("input", { type: "file", accept: "image/*" });
  const widget = { port, current: null, element: null };

  let last = null;
  const at = (event) => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width),
      (event.clientY - box.top) * (pad.height / box.height)];
  };
  pad.addEventListener("pointerdown", (event) => {
    pad.setPointerCapture(event.pointerId);
    last = at(event);
    ctx.beginPath();
    ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  });
  pad.addEventListener("pointermove", (event) => {
    if (last === null) return;
    const point = at(event);
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    ctx.lineTo(point[0], point[1]);
    ctx.stroke();
    last = point;
  });
  const finish = () => {
    if (last === null) return;
    last = null;
    widget.current = padValues(pad, height, width, fit.checked);
    showPreview(preview, widget.current, height, width, 1);
    changed();
  };
  pad.addEventListener("pointerup", finish);
  pad.addEventListener("pointercancel", finish);
  fit.addEventListener("change", () => {
    widget.current = padValues(pad, height, width, fit.checked);
    showPreview(preview, widget.current, height, width, 1);
    changed();
  });
  clear.addEventListener("click", () => {
    blank();
    widget.current = null;
    showPreview(preview, null, height, width, 1);
    clearOutputs("Draw again.");
  });
  upload.addEventListener("change", async () => {
    if (!upload.files.length) return;
    widget.current = await imageValues(upload.files[0], height, width, 1);
    showPreview(preview, widget.current, height, width, 1);
    upload.value = "";
    changed();
  });
  widget.element = el("div", {},
    heading(port),
    el("p", { class: "hint", text: `Draw with the mouse; it is fed as ${width}x${height} `
      + "pixels in [0, 1] (ink 1, background 0), as the training data was." }),
    pad,
    el("div", { class: "row" }, clear, el("label", {}, fit, " fit the drawing to the frame")),
    el("div", { class: "row" }, preview,
      el("span", { class: "hint", text: "what the model sees" })),
    el("div", { class: "row" }, el("span", { class: "hint", text: "or upload an image:" }), upload));
  widget.value = () => widget.current;
  return widget;
}

// An uploaded image, resized to the input's height and width, RGB or grayscale in [0, 1].
function imageWidget(port) {
  const [height, width, channels] = port.shape.slice(1);
  const upload = el("input", { type: "file", accept: "image/*", "data-input": port.name });
  const preview = previewCanvas(width, height);
  const widget = { port, current: null };
  upload.addEventListener("change", async () => {
    if (!upload.files.length) return;
    widget.current = await imageValues(upload.files[0], height, width, channels);
    showPreview(preview, widget.current, height, width, channels);
    changed();
  });
  widget.element = el("div", {},
    heading(port),
    el("p", { class: "hint", text: `An image, resized to ${width}x${height}, `
      + `${channels === 3 ? "RGB" : "grayscale"} in [0, 1] (as data=image_folder reads files).` }),
    upload,
    el("div", { class: "row" }, preview, el("span", { class: "hint", text: "what the model sees" })));
  widget.value = () => widget.current;
  return widget;
}

// A row of numbers, typed: as many as the input has values, in its dtype.
function numbersWidget(port) {
  const count = size(port.shape.slice(1));
  const integer = !port.dtype.startsWith("float");
  const field = el("input", {
    type: "text", "data-input": port.name, spellcheck: "false",
    placeholder: `${count} ${integer ? "whole numbers" : "numbers"}, separated by commas or spaces`,
  });
  const error = el("p", { class: "error" });
  const widget = { port, field };
  widget.value = () => {
    error.textContent = "";
    const parts = field.value.split(/[\s,;]+/).filter((p) => p.length > 0);
    const values = parts.map(Number);
    const bad = parts.find((p, i) => !Number.isFinite(values[i])
      || (integer && !Number.isInteger(values[i])));
    if (bad !== undefined) {
      error.textContent = `${JSON.stringify(bad)} is not a ${integer ? "whole " : ""}number`;
      return null;
    }
    if (values.length !== count) {
      error.textContent = `${port.name} takes ${count} numbers; ${values.length} given`;
      return null;
    }
    return port.dtype === "int64" ? BigInt64Array.from(values, BigInt)
      : TYPED[port.dtype].from(values);
  };
  field.addEventListener("keydown", (event) => { if (event.key === "Enter") changed(); });
  widget.element = el("div", {}, heading(port),
    el("p", { class: "hint", text: `${port.dtype}, shape [${port.shape.slice(1).join(", ")}]` }),
    field, error);
  return widget;
}

function heading(port) {
  return el("h2", {}, "Input ", el("code", { text: port.name }));
}

function previewCanvas(width, height) {
  const canvas = el("canvas", { class: "preview" });
  canvas.width = width;
  canvas.height = height;
  canvas.style.height = `${Math.round((96 * height) / width)}px`;
  return canvas;
}

function showPreview(canvas, values, height, width, channels) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  for (let i = 0; i < width * height; i += 1) {
    for (let c = 0; c < 3; c += 1) {
      const v = values === null ? 0 : values[i * channels + (channels === 3 ? c : 0)];
      image.data[i * 4 + c] = Math.round(Math.min(1, Math.max(0, v)) * 255);
    }
    image.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

// The pad's ink as height x width values in [0, 1]: optionally cropped to the ink and scaled,
// centred, until it fills the frame; then each model pixel is the mean of its block.
function padValues(pad, height, width, fit) {
  const source = pad.getContext("2d", { willReadFrequently: true })
    .getImageData(0, 0, pad.width, pad.height).data;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -1, -1];
  for (let y = 0; y < pad.height; y += 1) {
    for (let x = 0; x < pad.width; x += 1) {
      if (source[(y * pad.width + x) * 4] > 0) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return null;
  const big = document.createElement("canvas");
  big.width = width * SUPERSAMPLE;
  big.height = height * SUPERSAMPLE;
  const ctx = big.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, big.width, big.height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  if (fit) {
    const [w, h] = [x1 - x0 + 1, y1 - y0 + 1];
    const scale = Math.min(big.width / w, big.height / h);
    ctx.drawImage(pad, x0, y0, w, h, (big.width - w * scale) / 2, (big.height - h * scale) / 2,
      w * scale, h * scale);
  } else {
    ctx.drawImage(pad, 0, 0, big.width, big.height);
  }
  const pixels = ctx.getImageData(0, 0, big.width, big.height).data;
  const values = new Float32Array(height * width);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      let sum = 0;
      for (let dy = 0; dy < SUPERSAMPLE; dy += 1) {
        for (let dx = 0; dx < SUPERSAMPLE; dx += 1) {
          sum += pixels[((y * SUPERSAMPLE + dy) * big.width + x * SUPERSAMPLE + dx) * 4];
        }
      }
      values[y * width + x] = sum / (255 * SUPERSAMPLE * SUPERSAMPLE);
    }
  }
  return values;
}

// A file decoded by the browser, resized to height x width: RGB or grayscale (ITU-R 601 luma,
// as Pillow's "L"), in [0, 1], channels last.
async function imageValues(file, height, width, channels) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height).data;
  const values = new Float32Array(height * width * channels);
  for (let i = 0; i < height * width; i += 1) {
    const [r, g, b] = [data[i * 4], data[i * 4 + 1], data[i * 4 + 2]];
    if (channels === 3) {
      values.set([r / 255, g / 255, b / 255], i * 3);
    } else {
      values[i] = (r * 299 + g * 587 + b * 114) / 1000 / 255;
    }
  }
  return values;
}

// --- prediction --------------------------------------------------------------------------------

// One prediction at a time: a session runs one call at once.
function changed() {
  queue = queue.then(predict).catch((err) => fail(`prediction failed: ${err.message ?? err}`));
}

async function predict() {
  if (session === null) return;
  const feeds = {};
  const fed = {};
  const given = widgets.map((widget) => widget.value()); // each shows its own error
  if (given.includes(null)) return; // an input not given yet: nothing to predict
  for (const [i, widget] of widgets.entries()) {
    const values = given[i];
    const shape = [1, ...widget.port.shape.slice(1)];
    feeds[widget.port.name] = new ort.Tensor(widget.port.dtype, values, shape);
    fed[widget.port.name] = { shape, dtype: widget.port.dtype, values: Array.from(values, Number) };
  }
  const started = performance.now();
  const results = await session.run(feeds);
  const inferenceMs = performance.now() - started;
  const outputs = {};
  for (const port of window.pageConfig.outputs) {
    outputs[port.name] = readOutput(port, Array.from(results[port.name].data, Number));
  }
  window.lastInput = fed;
  window.lastResult = { outputs, inferenceMs };
  window.predictionCount += 1;
  showOutputs(outputs);
  status(`last prediction ${inferenceMs.toFixed(1)} ms`);
}

function readOutput(port, values) {
  const labels = port.classes ?? values.map((_, i) => String(i));
  if (port.activation === "softmax") {
    const top = Math.max(...values);
    const exp = values.map((v) => Math.exp(v - top));
    const total = exp.reduce((a, b) => a + b, 0);
    const probabilities = exp.map((e) => e / total);
    const predicted = probabilities.indexOf(Math.max(...probabilities));
    return { values, probabilities, predicted, label: labels[predicted], labels };
  }
  if (port.activation === "sigmoid") {
    const probabilities = values.map((v) => 1 / (1 + Math.exp(-v)));
    const predicted = probabilities.flatMap((p, i) => (p > 0.5 ? [i] : []));
    return { values, probabilities, predicted, label: predicted.map((i) => labels[i]), labels };
  }
  return { values };
}

function clearOutputs(message) {
  $("outputs").replaceChildren(el("h2", { text: "Prediction" }),
    el("p", { class: "hint", text: message }));
}

function showOutputs(outputs) {
  const blocks = window.pageConfig.outputs.map((port) => {
    const out = outputs[port.name];
    const block = el("div", { class: "output", "data-output": port.name });
    block.append(el("h2", {}, "Output ", el("code", { text: port.name }),
      port.activation ? ` (${port.activation} of the model's scores)` : ""));
    if (port.activation === "softmax") {
      const p = out.probabilities[out.predicted];
      block.append(el("p", { class: "predicted" }, "Predicted:",
        el("strong", { id: `predicted-${port.name}`, text: out.label }),
        ` ${(100 * p).toFixed(1)}%`));
    } else if (port.activation === "sigmoid") {
      block.append(el("p", { class: "predicted" }, "Above 0.5: ",
        el("strong", { id: `predicted-${port.name}`, text: out.label.join(", ") || "none" })));
    }
    if (out.probabilities) {
      const bars = el("div", { class: "bars" });
      out.probabilities.forEach((p, i) => {
        const top = port.activation === "softmax" ? i === out.predicted : p > 0.5;
        const fill = el("div", { class: "fill" });
        fill.style.width = `${(100 * p).toFixed(2)}%`;
        for (const node of [el("span", { class: "label", text: out.labels[i] }),
          el("div", { class: "track" }, fill),
          el("span", { class: "value", text: `${(100 * p).toFixed(1)}%` })]) {
          if (top) node.classList.add("top");
          bars.append(node);
        }
      });
      block.append(bars);
    } else {
      const shown = out.values.slice(0, 256).map((v) => fmt(v)).join("  ");
      block.append(el("p", { class: "hint", text: `shape [1, ${port.shape.slice(1).join(", ")}]`
        + (out.values.length > 256 ? `, the first 256 of ${out.values.length} values` : "") }),
      el("p", { class: "values", text: shown }));
    }
    return block;
  });
  $("outputs").replaceChildren(...blocks);
}

function status(extra) {
  const parts = [`onnxruntime-web ${ort.env.versions?.web ?? ""} (WebAssembly, 1 thread)`,
    `ready ${window.loadMs.toFixed(0)} ms after the page opened (model ${
      window.sessionMs.toFixed(0)} ms)`];
  if (extra) parts.push(extra);
  $("status").textContent = parts.join(" · ");
}

// --- start -------------------------------------------------------------------------------------

async function start() {
  const response = await fetch("config.json");
  const config = await response.json();
  window.pageConfig = config;
  $("recipe").textContent = config.recipe ?? "";
  const diff = config.onnx_max_abs_diff;
  $("source").textContent = `${config.run_dir} · trained on ${config.checkpoint_backend}, `
    + `step ${config.checkpoint_step} · ONNX opset ${config.opset}, `
    + `${(config.model_bytes / 1e6).toFixed(2)} MB`
    + (typeof diff === "number" ? `, within ${diff.toExponential(1)} of the Keras model` : "");
  const make = { draw: drawWidget, image: imageWidget, numbers: numbersWidget };
  widgets = config.inputs.map((port) => make[port.widget](port));
  $("inputs").replaceChildren(...widgets.map((w) => w.element));
  if (widgets.some((w) => w.port.widget === "numbers")) {
    const button = el("button", { type: "button", id: "predict", text: "Predict" });
    button.addEventListener("click", changed);
    $("inputs").append(el("div", { class: "row" }, button));
  }
  const kinds = new Set(widgets.map((w) => w.port.widget));
  clearOutputs(kinds.has("draw") ? "Draw a digit on the black square."
    : kinds.has("image") ? "Upload an image." : "Type the numbers, then Predict.");
  const started = performance.now();
  session = await ort.InferenceSession.create("model.onnx", {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  window.sessionMs = performance.now() - started;
  window.loadMs = performance.now();
  window.modelReady = true;
  status("");
}

start().catch((err) => fail(`could not start: ${err.message ?? err}`));
