// The browser demo: fine-tune the digits MLP with onnxruntime-web (wasm; WebGPU where the
// browser has it) through the adamax-onnx TrainingSession. State for tests: window.demo.
import { TrainingSession } from "../src/index.js";
import { decodeNpy, readZip } from "../src/npz.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const demo = (window.demo = { ready: false, done: false, error: null, losses: [], accuracy: [] });
const dist = new URL("../node_modules/onnxruntime-web/dist/", import.meta.url).href;

function status(text) {
  $("status").textContent = text;
  demo.status = text;
}

async function loadOrt(ep) {
  const ort = await import(`${dist}${ep === "webgpu" ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"}`);
  ort.env.wasm.wasmPaths = dist;
  // Threads need a cross-origin isolated page (COOP/COEP headers); a plain static server
  // (python -m http.server) gives one thread.
  const threads = Number(params.get("threads") ?? (crossOriginIsolated ? navigator.hardwareConcurrency : 1));
  ort.env.wasm.numThreads = threads;
  demo.threads = threads;
  return ort;
}

async function fetchBytes(path) {
  const res = await fetch(path);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status} (run js/demo/make_assets.py first)`);
  return new Uint8Array(await res.arrayBuffer());
}

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  const pad = 50;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, pad / 2, w - 2 * pad, h - 1.5 * pad);
  ctx.font = "22px sans-serif";
  ctx.fillStyle = "#333";
  const total = demo.totalSteps || 1;
  const maxLoss = Math.max(2.5, ...demo.losses.slice(0, 5));
  const x = (i) => pad + ((w - 2 * pad) * i) / total;
  const yl = (v) => pad / 2 + (h - 1.5 * pad) * (1 - Math.min(v, maxLoss) / maxLoss);
  ctx.fillText(`loss ${maxLoss.toFixed(1)}`, 4, pad / 2 + 16);
  ctx.fillText("accuracy 1.0", w - pad - 140, pad / 2 + 20);
  ctx.fillText(`step ${total}`, w - pad - 100, h - 8);
  ctx.strokeStyle = "#1f77b4";
  ctx.lineWidth = 2;
  ctx.beginPath();
  demo.losses.forEach((v, i) => (i ? ctx.lineTo(x(i), yl(v)) : ctx.moveTo(x(i), yl(v))));
  ctx.stroke();
  ctx.strokeStyle = "#ff7f0e";
  ctx.fillStyle = "#ff7f0e";
  ctx.lineWidth = 3;
  const ya = (a) => pad / 2 + (h - 1.5 * pad) * (1 - a);
  const points = [[0, demo.initialAccuracy], ...demo.accuracy.map((a, e) => [(e + 1) * demo.stepsPerEpoch, a])];
  ctx.beginPath();
  points
    .filter(([, a]) => a !== undefined)
    .forEach(([s, a], i) => {
      if (i) ctx.lineTo(x(s), ya(a));
      else ctx.moveTo(x(s), ya(a));
      ctx.fillRect(x(s) - 4, ya(a) - 4, 8, 8);
    });
  ctx.stroke();
}

async function accuracy(ort, modelBytes, data) {
  const sess = await ort.InferenceSession.create(modelBytes, { executionProviders: ["wasm"] });
  const x = new ort.Tensor("float32", data.x_test.data, data.x_test.dims);
  const logits = (await sess.run({ input: x }))[sess.outputNames[0]];
  await sess.release();
  const [n, k] = logits.dims;
  let correct = 0;
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits.data[i * k + j] > logits.data[i * k + best]) best = j;
    if (BigInt(best) === data.y_test.data[i]) correct++;
  }
  return correct / n;
}

function download(bytes, name, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function main() {
  if (navigator.gpu) $("ep").append(new Option("webgpu", "webgpu"));
  const [modelBytes, zip] = await Promise.all([fetchBytes("assets/mlp.train.onnx"), fetchBytes("assets/digits.npz")]);
  const data = {};
  for (const [name, bytes] of await readZip(zip)) data[name.replace(/\.npy$/, "")] = decodeNpy(bytes, name);
  demo.reference = await (await fetch("assets/reference.json")).json();
  let session = null;
  let ort = null;

  async function train(epochs, ep) {
    ort = await loadOrt(ep);
    session = await TrainingSession.create(modelBytes, {
      ort,
      sessionOptions: { executionProviders: [ep] },
    });
    demo.session = session;
    demo.backend = ep;
    const [n, features] = data.x_train.dims;
    const batch = 32;
    demo.stepsPerEpoch = Math.ceil(n / batch);
    demo.totalSteps = demo.stepsPerEpoch * epochs;
    demo.losses = [];
    demo.accuracy = [];
    demo.initialAccuracy = await accuracy(ort, session.exportInferenceModel(), data);
    // Batch buffers allocated once per size: a step copies its rows into them.
    const buffers = new Map();
    const batchOf = (size) => {
      if (!buffers.has(size)) {
        const x = new Float32Array(size * features);
        const y = new BigInt64Array(size);
        buffers.set(size, { x, y, feeds: { input: new ort.Tensor("float32", x, [size, features]), labels: new ort.Tensor("int64", y, [size]) } });
      }
      return buffers.get(size);
    };
    let stepTime = 0;
    for (let e = 0; e < epochs; e++) {
      const order = data.order.data.subarray((e % data.order.dims[0]) * n, (e % data.order.dims[0] + 1) * n);
      for (let s = 0; s < n; s += batch) {
        const size = Math.min(batch, n - s);
        const b = batchOf(size);
        for (let r = 0; r < size; r++) {
          const row = order[s + r];
          b.x.set(data.x_train.data.subarray(row * features, (row + 1) * features), r * features);
          b.y[r] = data.y_train.data[row];
        }
        const t0 = performance.now();
        demo.losses.push(await session.step(b.feeds));
        stepTime += performance.now() - t0;
      }
      demo.accuracy.push(await accuracy(ort, session.exportInferenceModel(), data));
      demo.msPerStep = stepTime / demo.losses.length;
      status(
        `${ep}, ${demo.threads} thread(s): epoch ${e + 1}/${epochs}, loss ${demo.losses.at(-1).toFixed(4)}, ` +
          `held-out accuracy ${(100 * demo.accuracy.at(-1)).toFixed(1)}% ` +
          `(before training ${(100 * demo.initialAccuracy).toFixed(1)}%), ${demo.msPerStep.toFixed(2)} ms/step`,
      );
      draw();
      await new Promise((r) => setTimeout(r, 0)); // let the page paint
    }
    $("download").disabled = false;
    $("checkpoint").disabled = false;
  }

  // Used by the end-to-end test: resume from a checkpoint written by Python.
  demo.loadCheckpoint = async (path) => {
    const other = await TrainingSession.create(modelBytes, { ort: ort ?? (await loadOrt("wasm")) });
    await other.loadCheckpoint(await fetchBytes(path));
    return { globalStep: other.globalStep, params: Object.fromEntries(Object.entries(other.parameters()).map(([k, t]) => [k, Array.from(t.data.slice(0, 4))])) };
  };
  demo.checkpointBase64 = async () => {
    const bytes = await session.saveCheckpoint();
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };

  $("train").onclick = async () => {
    $("train").disabled = true;
    try {
      await train(Number($("epochs").value), $("ep").value);
      demo.done = true;
    } catch (err) {
      demo.error = String(err?.stack ?? err);
      status(`error: ${err}`);
    } finally {
      $("train").disabled = false;
    }
  };
  $("download").onclick = () => download(session.exportInferenceModel(), "mlp.trained.onnx", "application/octet-stream");
  $("checkpoint").onclick = async () => download(await session.saveCheckpoint(), "checkpoint.npz", "application/zip");
  demo.ready = true;
  status(`ready: ${data.x_train.dims[0]} training and ${data.x_test.dims[0]} held-out digits. Press Train.`);
  draw();
  if (params.get("ep")) $("ep").value = params.get("ep");
  if (params.get("epochs")) $("epochs").value = params.get("epochs");
  if (params.has("autostart")) $("train").click();
}

main().catch((err) => {
  demo.error = String(err?.stack ?? err);
  status(`error: ${err}`);
});
