// End to end in headless Chromium (Debian's chromium, driven by puppeteer-core; no browser
// download): the demo page, served by `python -m http.server` on 127.0.0.1, fine-tunes the
// digits MLP with onnxruntime-web (wasm) like the Python TrainingSession does, the downloaded
// model runs in Python, and checkpoints cross between the browser and Python.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import puppeteer from "puppeteer-core";
import { ROOT, python } from "../helpers.js";

const JS = join(ROOT, "js");
const ASSETS = join(JS, "demo/assets");
const CHROMIUM = process.env.CHROMIUM_PATH ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find(existsSync);
let server;
let browser;
let base;

before(async () => {
  if (!existsSync(join(ASSETS, "reference.json"))) {
    execFileSync(python(), [join(JS, "demo/make_assets.py")], { cwd: ROOT, stdio: "inherit" });
  }
  assert.ok(CHROMIUM, "no chromium: apt-get install chromium (or set CHROMIUM_PATH)");
  server = spawn(python(), ["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", JS], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  base = await new Promise((resolve, reject) => {
    server.stdout.on("data", (d) => {
      const m = /port (\d+)/.exec(String(d));
      if (m) resolve(`http://127.0.0.1:${m[1]}`);
    });
    server.on("exit", (code) => reject(new Error(`http.server exited with ${code}`)));
  });
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill();
});

async function trained(page, epochs) {
  await page.goto(`${base}/demo/?autostart=1&epochs=${epochs}`);
  await page.waitForFunction(() => window.demo && (window.demo.done || window.demo.error), { timeout: 240_000 });
  const demo = await page.evaluate(() => ({
    error: window.demo.error,
    losses: window.demo.losses,
    accuracy: window.demo.accuracy,
    initialAccuracy: window.demo.initialAccuracy,
    reference: window.demo.reference,
    msPerStep: window.demo.msPerStep,
    threads: window.demo.threads,
    backend: window.demo.backend,
  }));
  assert.equal(demo.error, null);
  return demo;
}

test("the page trains the digits MLP to Python's numbers and accuracy", async (t) => {
  const page = await browser.newPage();
  const downloads = mkdtempSync(join(tmpdir(), "adamax-dl-"));
  const cdp = await page.createCDPSession();
  await cdp.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: downloads });
  const demo = await trained(page, 10);
  const ref = demo.reference;
  assert.equal(demo.backend, "wasm");
  assert.equal(demo.losses.length, ref.losses.length);
  // Step for step like Python over the first epoch (rounding of the wasm kernels only) ...
  let worst = 0;
  for (let i = 0; i < 43; i++) {
    worst = Math.max(worst, Math.abs(demo.losses[i] - ref.losses[i]) / Math.abs(ref.losses[i]));
  }
  t.diagnostic(`wasm (${demo.threads} thread): ${demo.msPerStep.toFixed(3)} ms/step; first-epoch loss max rel diff to Python ${worst.toExponential(2)}`);
  t.diagnostic(`held-out accuracy ${demo.initialAccuracy} -> ${demo.accuracy.at(-1)} (Python ${ref.accuracy.at(-1)})`);
  assert.ok(worst <= 1e-5, `first-epoch losses differ from Python by ${worst}`);
  // ... and to the accuracy the Python main job reaches.
  assert.ok(demo.accuracy.at(-1) >= 0.95);
  assert.ok(Math.abs(demo.accuracy.at(-1) - ref.accuracy.at(-1)) <= 0.01);

  // The download button gives the trained model; Python runs it to the same accuracy.
  await page.click("#download");
  const file = join(downloads, "mlp.trained.onnx");
  for (let i = 0; i < 100 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(existsSync(file), `no download in ${readdirSync(downloads)}`);
  const acc = execFileSync(
    python(),
    ["-c", `import numpy as np, onnxruntime as ort
d = np.load("${join(ASSETS, "digits.npz")}")
s = ort.InferenceSession("${file}", providers=["CPUExecutionProvider"])
print(float((s.run(None, {"input": d["x_test"]})[0].argmax(1) == d["y_test"]).mean()))`],
    { cwd: ROOT },
  );
  // the same weights in Python's onnxruntime: argmax may differ only on a near-tie
  assert.ok(Math.abs(Number(String(acc).trim()) - demo.accuracy.at(-1)) <= 1.5 / 450);

  // A checkpoint saved in the browser loads in Python: same parameters as the downloaded model.
  const ckpt = join(downloads, "browser.ckpt.npz");
  writeFileSync(ckpt, Buffer.from(await page.evaluate(() => window.demo.checkpointBase64()), "base64"));
  execFileSync(
    python(),
    ["-c", `import numpy as np, onnx, adamax_onnx as ax
from onnx import numpy_helper
s = ax.TrainingSession("${join(ASSETS, "mlp.train.onnx")}")
s.load_checkpoint("${ckpt}")
assert s.global_step == ${demo.losses.length}, s.global_step
m = {i.name: numpy_helper.to_array(i) for i in onnx.load("${file}").graph.initializer}
for k, v in s.parameters().items():
    np.testing.assert_array_equal(v, m[k], err_msg=k)`],
    { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"] },
  );
  // ... and back: Python's checkpoint loads in the browser.
  const resumed = await page.evaluate(() => window.demo.loadCheckpoint("assets/python.ckpt.npz"));
  assert.equal(resumed.globalStep, 43);
  await page.close();
});

// The node fixtures (js/test/make_fixtures.py) in onnxruntime-web's wasm backend: MLP, CNN,
// transformer, lr table, schedule, loss scale with an overflow: losses and every carried
// tensor within 1e-5 of Python.
test("the Python-recorded runs replay in wasm within 1e-5", async (t) => {
  const { CASES } = await import("../helpers.js");
  const page = await browser.newPage();
  await page.goto(`${base}/demo/`);
  const results = await page.evaluate(async (cases) => {
    const ort = await import("/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = "/node_modules/onnxruntime-web/dist/";
    ort.env.wasm.numThreads = 1;
    const { TrainingSession } = await import("/src/index.js");
    const { readZip, decodeNpy } = await import("/src/npz.js");
    const get = async (p) => new Uint8Array(await (await fetch(`/test/fixtures/${p}`)).arrayBuffer());
    const npz = async (p) => {
      const out = {};
      for (const [k, v] of await readZip(await get(p))) out[k.replace(/\.npy$/, "")] = decodeNpy(v, k);
      return out;
    };
    const results = [];
    for (const c of cases) {
      const sess = await TrainingSession.create(await get(`${c.name}.onnx`), { ort });
      const b = await npz(`${c.name}.batches.npz`);
      const ref = await npz(`${c.name}.ref.npz`);
      let lossDiff = 0;
      for (let i = 0; i < c.steps; i++) {
        if (c.set_lr[i] !== undefined) sess.setLearningRate(c.set_lr[i]);
        const feeds = {};
        for (const k of c.data_inputs) feeds[k] = new ort.Tensor(b[`${i}/${k}`].type, b[`${i}/${k}`].data, b[`${i}/${k}`].dims);
        const loss = await sess.step(feeds);
        const want = ref.__losses__.data[i];
        if (loss !== null && !(Number.isNaN(want) && Number.isNaN(loss))) lossDiff = Math.max(lossDiff, Math.abs(loss - want) / Math.max(1, Math.abs(want)));
      }
      // float16: the reference holds bits (Uint16Array), the browser's tensors a Float16Array
      const half = (h) => {
        const e = (h >> 10) & 31;
        const m = h & 1023;
        const v = e === 0 ? m * 2 ** -24 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * 2 ** (e - 15);
        return h & 32768 ? -v : v;
      };
      let stateDiff = 0;
      let where = null;
      for (const [name, tensor] of Object.entries(sess.tensors())) {
        const r = ref[name].data;
        const f16 = tensor.type === "float16";
        const value = (x) => (f16 && tensor.data instanceof Uint16Array ? half(x) : Number(x));
        for (let j = 0; j < r.length; j++) {
          const d = Math.abs(value(tensor.data[j]) - (f16 ? half(r[j]) : Number(r[j])));
          if (!(d <= stateDiff)) [stateDiff, where] = [Number.isNaN(d) ? Infinity : d, name];
        }
      }
      // a checkpoint saved in the browser restores the same bits in the browser
      const again = await TrainingSession.create(await get(`${c.name}.onnx`), { ort });
      await again.loadCheckpoint(await sess.saveCheckpoint());
      const raw = (t) => new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      const mine = sess.tensors();
      const restored = Object.entries(again.tensors()).every(([n, t]) => raw(t).every((b, i) => b === raw(mine[n])[i]));
      results.push({ name: c.name, lossDiff, stateDiff, where, restored, globalStep: sess.globalStep });
    }
    return results;
  }, CASES);
  for (const r of results) {
    t.diagnostic(`${r.name}: loss diff ${r.lossDiff.toExponential(2)}, state diff ${r.stateDiff.toExponential(2)} (${r.where})`);
    assert.ok(r.lossDiff <= 1e-5, `${r.name}: loss differs by ${r.lossDiff}`);
    assert.ok(r.stateDiff <= 1e-5, `${r.name}: ${r.where} differs by ${r.stateDiff}`);
    assert.ok(r.restored, `${r.name}: a browser checkpoint did not restore the same state`);
  }
  await page.close();
});
