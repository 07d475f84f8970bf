// Training-step time in headless Chromium with onnxruntime-web (wasm), 1 thread and more:
// the JS TrainingSession on the MLP and CNN fixtures. Threads need a cross-origin isolated
// page, so this serves js/ itself with COOP/COEP headers (python -m http.server sends none:
// the demo then runs on one thread).
//
//   node bench/wasm.js [--threads 1,2] [--steps 300] [--out FILE.json]
import { createReadStream, existsSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize } from "node:path";
import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";
import { CASES, ROOT } from "../test/helpers.js";

const { values: args } = parseArgs({
  options: { threads: { type: "string", default: "1,2" }, steps: { type: "string", default: "300" }, out: { type: "string" } },
});
const JS = join(ROOT, "js");
const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".html": "text/html" };
const server = createServer((req, res) => {
  const path = normalize(join(JS, decodeURIComponent(new URL(req.url, "http://x").pathname)));
  if (!path.startsWith(JS) || !existsSync(path) || statSync(path).isDirectory()) {
    res.writeHead(path.endsWith("/blank") ? 200 : 404, { "Content-Type": "text/html", "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" });
    return res.end("<!doctype html><title>bench</title>");
  }
  res.writeHead(200, {
    "Content-Type": TYPES[extname(path)] ?? "application/octet-stream",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
  });
  createReadStream(path).pipe(res);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const results = { steps: Number(args.steps), runs: [] };
try {
  for (const threads of args.threads.split(",").map(Number)) {
    const page = await browser.newPage();
    await page.goto(`${base}/blank`);
    const run = await page.evaluate(
      async (threads, steps, cases) => {
        const ort = await import("/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs");
        ort.env.wasm.wasmPaths = "/node_modules/onnxruntime-web/dist/";
        ort.env.wasm.numThreads = threads;
        const { TrainingSession } = await import("/src/index.js");
        const { readZip, decodeNpy } = await import("/src/npz.js");
        const get = async (p) => new Uint8Array(await (await fetch(`/test/fixtures/${p}`)).arrayBuffer());
        const out = { threads, crossOriginIsolated, cases: {} };
        for (const c of cases) {
          const sess = await TrainingSession.create(await get(`${c.name}.onnx`), { ort });
          const arrays = {};
          for (const [k, v] of await readZip(await get(`${c.name}.batches.npz`))) arrays[k.replace(/\.npy$/, "")] = decodeNpy(v, k);
          const feeds = [];
          for (let i = 0; i < c.steps; i++) {
            const f = {};
            for (const k of c.data_inputs) f[k] = new ort.Tensor(arrays[`${i}/${k}`].type, arrays[`${i}/${k}`].data, arrays[`${i}/${k}`].dims);
            feeds.push(f);
          }
          for (let i = 0; i < 50; i++) await sess.step(feeds[i % feeds.length]);
          const samples = [];
          for (let r = 0; r < 5; r++) {
            const t0 = performance.now();
            for (let i = 0; i < steps; i++) await sess.step(feeds[i % feeds.length]);
            samples.push((performance.now() - t0) / steps);
          }
          samples.sort((a, b) => a - b);
          out.cases[c.name] = { ms_per_step: samples[2], samples };
        }
        return out;
      },
      threads,
      Number(args.steps),
      CASES.filter((c) => c.name === "mlp" || c.name === "cnn"),
    );
    results.runs.push(run);
    for (const [name, r] of Object.entries(run.cases)) {
      console.log(`wasm, ${threads} thread(s) (isolated: ${run.crossOriginIsolated}): ${name} ${r.ms_per_step.toFixed(3)} ms/step`);
    }
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
}
if (args.out) writeFileSync(args.out, JSON.stringify(results, null, 1));
