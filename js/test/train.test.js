// TrainingSession in onnxruntime-node against the Python TrainingSession's recorded run:
// MLP, CNN, transformer, a learning-rate table, a schedule, a dynamic loss scale (with an
// overflowing step) and set_learning_rate: losses and every carried tensor within 1e-6.
import assert from "node:assert/strict";
import { test } from "node:test";
import { TrainingSession } from "../src/index.js";
import { CASES, batches, fixture, loadNpz, ort, worstStateDiff } from "./helpers.js";

const TOL = 1e-6;

for (const c of CASES) {
  test(`${c.name}: ${c.steps} steps match Python`, async (t) => {
    const sess = await TrainingSession.create(fixture(`${c.name}.onnx`), { ort });
    const ref = await loadNpz(fixture(`${c.name}.ref.npz`));
    const steps = await batches(c.name);
    assert.equal(steps.length, c.steps);
    for (let i = 0; i < c.steps; i++) {
      if (c.set_lr[i] !== undefined) sess.setLearningRate(c.set_lr[i]);
      const loss = await sess.step(steps[i]);
      const want = ref.__losses__.data[i];
      if (c.kind === "optimizer") {
        assert.equal(loss, null);
        continue;
      }
      const close = Number.isNaN(want) ? Number.isNaN(loss) : Math.abs(loss - want) <= TOL * Math.max(1, Math.abs(want));
      assert.ok(close, `step ${i}: ${loss} vs ${want}`);
      assert.equal(sess.lastOverflow, Boolean(ref.__overflow__.data[i]), `overflow at step ${i}`);
    }
    const { worst, where } = worstStateDiff(sess.tensors(), ref);
    t.diagnostic(`max abs state difference to Python: ${worst}`);
    assert.ok(worst <= TOL, `state differs by ${worst} at ${where}`);
    const overflows = Array.from(ref.__overflow__.data).filter(Boolean).length;
    assert.equal(sess.globalStep, c.steps - overflows);
    assert.equal(sess.state().globalStep, c.steps - overflows);
    if (c.loss_scale !== null) {
      assert.equal(sess.lossScale, c.loss_scale);
      assert.ok(overflows > 0, "the loss-scale case has an overflowing step");
    } else {
      assert.equal(sess.lossScale, null);
    }
    // The exported inference model is the file Python wrote, byte for byte when the
    // parameters agree bit for bit, and runs in a plain InferenceSession.
    if (c.kind === "optimizer") {
      assert.throws(() => sess.exportInferenceModel(), /optimizer model has no inference graph/);
      return;
    }
    const exported = sess.exportInferenceModel();
    if (worst === 0) assert.deepEqual(Buffer.from(exported), fixture(`${c.name}.trained.onnx`));
    const infer = await ort.InferenceSession.create(exported);
    const x = steps[0][c.data_inputs[0]];
    const out = await infer.run({ [c.data_inputs[0]]: x });
    assert.equal(out[infer.outputNames[0]].dims[0], x.dims[0]);
  });
}

test("parameters(), state() and learning rates", async () => {
  const sess = await TrainingSession.create(fixture("mlp.onnx"), { ort });
  const params = sess.parameters();
  assert.deepEqual(Object.keys(params), sess.contract.params);
  assert.deepEqual(params["fc1.weight"].dims, [32, 64]);
  const st = sess.state();
  assert.equal(st.globalStep, 0);
  assert.equal(st.beta1Power, 1);
  assert.deepEqual(Object.keys(st.m), sess.contract.params);
  assert.ok(st.v["fc2.bias"].data.every((x) => x === 0));
  assert.deepEqual(sess.learningRates, { 0: Math.fround(0.01) });
  sess.setLearningRate(0.5);
  assert.deepEqual(sess.learningRates, { 0: 0.5 });
  assert.throws(() => sess.setLearningRate(-1), RangeError);
  assert.throws(() => sess.setLearningRate(0.1, 3), /group 3 has no fixed learning rate/);
  // copies: editing them changes nothing
  params["fc1.weight"].data.fill(0);
  assert.notEqual(sess.parameters()["fc1.weight"].data[0], 0);
  sess.setParameters({ "fc2.bias": new ort.Tensor("float32", new Float32Array(10).fill(2), [10]) });
  assert.equal(sess.parameters()["fc2.bias"].data[3], 2);
  assert.throws(
    () => sess.setParameters({ "fc2.bias": new ort.Tensor("float32", new Float32Array(3), [3]) }),
    /must be float32\[10\]/,
  );
});

test("a trainable file or a foreign model is refused with a clear error", async () => {
  const infer = fixture("mlp.trained.onnx");
  await assert.rejects(TrainingSession.create(infer, { ort }), /not built by adamax-onnx/);
  await assert.rejects(TrainingSession.create(new Uint8Array([1, 2, 3]), { ort }), /not a serialized ONNX/);
});

test("packed state (the default) and one tensor per state input give the same bits", async () => {
  for (const name of ["cnn", "mlp_loss_scale"]) {
    const steps = await batches(name);
    const a = await TrainingSession.create(fixture(`${name}.onnx`), { ort });
    const b = await TrainingSession.create(fixture(`${name}.onnx`), { ort, pack: false });
    assert.ok(a.session.inputNames.includes("adamax.packed.float32"));
    assert.ok(!b.session.inputNames.includes("adamax.packed.float32"));
    for (const s of steps) assert.equal(await a.step(s), await b.step(s));
    assert.equal(worstStateDiff(a.tensors(), b.tensors()).worst, 0);
  }
});

test("without options.ort: a clear error", async () => {
  await assert.rejects(TrainingSession.create(fixture("mlp.onnx")), /options.ort must be the onnxruntime module/);
});

test("a format-1 model (state inputs with defaults, older versions) trains the same", async () => {
  const sess = await TrainingSession.create(fixture("mlp.format1.onnx"), { ort });
  assert.equal(sess.contract.format, 1);
  assert.deepEqual(sess.contract.initial ?? {}, {});
  const c = CASES.find((x) => x.name === "mlp");
  const ref = await loadNpz(fixture("mlp.ref.npz"));
  const steps = await batches("mlp");
  for (let i = 0; i < c.steps; i++) {
    if (c.set_lr[i] !== undefined) sess.setLearningRate(c.set_lr[i]);
    assert.equal(await sess.step(steps[i]), ref.__losses__.data[i]);
  }
  assert.equal(worstStateDiff(sess.tensors(), ref).worst, 0);
});
