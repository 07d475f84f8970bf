// Shared helpers of the node tests: fixtures recorded by make_fixtures.py (Python
// TrainingSession), npz reading, and the Python interpreter for round trips.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { decodeNpy, readZip } from "../src/npz.js";

export { ort };
export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, "../..");
export const FIXTURES = process.env.ADAMAX_FIXTURES ?? join(HERE, "fixtures");

export function python() {
  const candidates = [process.env.ADAMAX_PYTHON, join(ROOT, ".venv/bin/python")].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`no Python with adamax-onnx: set ADAMAX_PYTHON (tried ${candidates})`);
  return found;
}

if (!existsSync(join(FIXTURES, "cases.json"))) {
  throw new Error(
    `no fixtures in ${FIXTURES}: run \`.venv/bin/python js/test/make_fixtures.py\` first`,
  );
}

export const CASES = JSON.parse(readFileSync(join(FIXTURES, "cases.json"), "utf8")).cases;

export function fixture(name) {
  return readFileSync(join(FIXTURES, name));
}

/** An .npz file as name -> {type, data, dims}. */
export async function loadNpz(bytes) {
  const out = {};
  for (const [name, data] of await readZip(bytes)) {
    out[name.replace(/\.npy$/, "")] = decodeNpy(data, name);
  }
  return out;
}

/** The batches of a case: one feeds object (input name -> ort.Tensor) per step. */
export async function batches(name) {
  const arrays = await loadNpz(fixture(`${name}.batches.npz`));
  const steps = [];
  for (const [key, a] of Object.entries(arrays)) {
    const [i, input] = key.split("/");
    steps[+i] ??= {};
    steps[+i][input] = new ort.Tensor(a.type, a.data, a.dims);
  }
  return steps;
}

/** Largest |a - b| over two typed arrays (BigInt-safe). */
export function maxAbsDiff(a, b) {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(Number(a[i]) - Number(b[i]));
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : Math.max(worst, d);
  }
  return worst;
}

/** Largest difference between the session's carried tensors and a reference npz. */
export function worstStateDiff(tensors, ref) {
  let worst = 0;
  let where = null;
  for (const [name, t] of Object.entries(tensors)) {
    if (!ref[name]) throw new Error(`reference lacks ${name}`);
    const d = maxAbsDiff(t.data, ref[name].data);
    if (d > worst || Number.isNaN(d)) [worst, where] = [d, name];
  }
  return { worst, where };
}
