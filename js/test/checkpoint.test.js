// Checkpoints in the open format of adamax_onnx/checkpoint.py: Python -> JS -> Python -> JS,
// checksums checked on both sides, and refusals that leave the session untouched.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { CheckpointError, TrainingSession, readCheckpoint } from "../src/index.js";
import { FIXTURES, ROOT, batches, fixture, loadNpz, ort, python, worstStateDiff } from "./helpers.js";

// Python loads a JS checkpoint (identity, checksums, shapes checked by load_checkpoint), takes
// the remaining steps and saves its own checkpoint for JS to read back.
const PY = `
import sys, numpy as np
import adamax_onnx as ax
model, ckpt, batches, step, start, stop, out = sys.argv[1:8]
sess = ax.TrainingSession(model)
sess.load_checkpoint(ckpt)
assert sess.global_step == int(step), sess.global_step
b = np.load(batches)
for i in range(int(start), int(stop)):
    sess.step({k.split("/", 1)[1]: b[k] for k in b.files if k.startswith(f"{i}/")})
sess.save_checkpoint(out)
print(sess.global_step)
`;

for (const name of ["mlp", "cnn", "cnn_bn_dropout", "transformer", "mlp_loss_scale"]) {
  test(`${name}: Python checkpoint -> JS -> Python -> JS`, async () => {
    const c = (await import("./helpers.js")).CASES.find((x) => x.name === name);
    const steps = await batches(name);
    const ref = await loadNpz(fixture(`${name}.ref.npz`));
    const dir = mkdtempSync(join(tmpdir(), "adamax-ckpt-"));
    // 1. resume in JS from Python's checkpoint taken at ckpt_step
    const js = await TrainingSession.create(fixture(`${name}.onnx`), { ort });
    await js.loadCheckpoint(fixture(`${name}.ckpt.npz`));
    const overflowsBefore = Array.from(ref.__overflow__.data.slice(0, c.ckpt_step)).filter(Boolean).length;
    assert.equal(js.globalStep, c.ckpt_step - overflowsBefore);
    const mid = c.ckpt_step + 1;
    for (let i = c.ckpt_step; i < mid; i++) await js.step(steps[i]);
    // 2. JS saves; Python loads it and finishes the run
    const jsCkpt = join(dir, "js.npz");
    writeFileSync(jsCkpt, await js.saveCheckpoint());
    const pyCkpt = join(dir, "py.npz");
    execFileSync(
      python(),
      ["-c", PY, join(FIXTURES, `${name}.onnx`), jsCkpt, join(FIXTURES, `${name}.batches.npz`), String(js.globalStep), String(mid), String(c.steps), pyCkpt],
      { cwd: ROOT, stdio: ["ignore", "pipe", "inherit"] },
    );
    // 3. JS reads Python's final checkpoint: the uninterrupted Python run's final state
    const back = await TrainingSession.create(fixture(`${name}.onnx`), { ort });
    await back.loadCheckpoint(readFileSync(pyCkpt));
    const { worst, where } = worstStateDiff(back.tensors(), ref);
    assert.equal(worst, 0, `state differs by ${worst} at ${where}`);
  });
}

test("a JS checkpoint restores the exact state in JS", async () => {
  const steps = await batches("mlp");
  const a = await TrainingSession.create(fixture("mlp.onnx"), { ort });
  for (const b of steps.slice(0, 3)) await a.step(b);
  a.setLearningRate(0.003);
  const bytes = await a.saveCheckpoint();
  const { meta } = await readCheckpoint(bytes);
  assert.equal(meta.global_step, 3);
  assert.equal(meta.identity, await a.identity());
  const b = await TrainingSession.create(fixture("mlp.onnx"), { ort });
  await b.loadCheckpoint(bytes);
  assert.deepEqual(b.learningRates, a.learningRates);
  for (const s of steps.slice(3)) assert.equal(await a.step(s), await b.step(s));
  assert.equal(worstStateDiff(a.tensors(), Object.fromEntries(Object.entries(b.tensors()))).worst, 0);
});

test("corrupted, truncated and foreign checkpoints are refused, state untouched", async () => {
  const sess = await TrainingSession.create(fixture("mlp.onnx"), { ort });
  const before = sess.tensors();
  const good = new Uint8Array(fixture("mlp.ckpt.npz"));
  // flip one byte inside the first tensor's data: the zip CRC (and the SHA-256) fail
  const bad = good.slice();
  bad[200] ^= 0xff;
  await assert.rejects(sess.loadCheckpoint(bad), CheckpointError);
  await assert.rejects(sess.loadCheckpoint(good.slice(0, good.length - 100)), /truncated or corrupted/);
  await assert.rejects(sess.loadCheckpoint(fixture("cnn.ckpt.npz")), /belongs to another model/);
  await assert.rejects(sess.loadCheckpoint(fixture("mlp_table.ckpt.npz")), /another model/);
  assert.equal(worstStateDiff(sess.tensors(), before).worst, 0);
  assert.equal(sess.globalStep, 0);
});

test("a checksum mismatch with a valid zip is reported as such", async () => {
  const { writeCheckpoint } = await import("../src/npz.js");
  const bytes = await writeCheckpoint({ w: { type: "float32", data: new Float32Array([1, 2]), dims: [2] } }, { identity: "x" });
  const { meta } = await readCheckpoint(bytes);
  // rewrite the archive with a wrong digest in the metadata
  const { arrays } = await readCheckpoint(bytes);
  const forged = await writeCheckpoint(arrays, { identity: "x" });
  const text = new TextDecoder().decode(forged);
  assert.ok(text.includes(meta.tensors[0].sha256));
  const { writeZip, encodeNpy, readZip } = await import("../src/npz.js");
  const entries = [...(await readZip(forged))];
  const doc = { ...meta, tensors: [{ ...meta.tensors[0], sha256: "0".repeat(64) }] };
  const json = new TextEncoder().encode(JSON.stringify(doc));
  entries[entries.length - 1] = ["__meta__.npy", encodeNpy({ type: "uint8", data: json, dims: [json.length] })];
  await assert.rejects(readCheckpoint(writeZip(entries)), /fails its checksum/);
});
