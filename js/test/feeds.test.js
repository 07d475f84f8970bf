// Bad feeds: a FeedError naming the input and what was expected, before anything runs; the
// state is unchanged and the next good step gives exactly a fresh session's first step.
import assert from "node:assert/strict";
import { test } from "node:test";
import { FeedError, LearningRateTableExhausted, TrainingSession } from "../src/index.js";
import { batches, fixture, ort, worstStateDiff } from "./helpers.js";

const f32 = (dims, fill = 0.5) => new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(fill), dims);
const i64 = (values, dims = [values.length]) => new ort.Tensor("int64", BigInt64Array.from(values.map(BigInt)), dims);

test("bad feeds are refused before anything runs", async () => {
  const sess = await TrainingSession.create(fixture("mlp.onnx"), { ort });
  const [good] = await batches("mlp");
  const before = sess.tensors();
  const cases = [
    [{ input: good.input }, /missing input\(s\) \["labels"\]; a step takes exactly \["input","labels"\]/],
    [{ ...good, extra: good.labels }, /unexpected input\(s\) \["extra"\]/],
    [{ ...good, "fc1.weight": good.input }, /unexpected input\(s\) \["fc1.weight"\]/],
    [{ ...good, "adamax.global_step": i64([0], []) }, /unexpected input/],
    [{ ...good, input: new ort.Tensor("float64", new Float64Array(64 * 32), [32, 64]) }, /input 'input' has type float64, expected float32/],
    [{ ...good, labels: new ort.Tensor("int32", new Int32Array(32), [32]) }, /'labels' has type int32, expected int64/],
    [{ ...good, input: f32([32, 8, 8]) }, /'input' has shape \[32, 8, 8\], expected rank 2/],
    [{ ...good, input: f32([32, 63]) }, /axis 1 must be 64/],
    [{ ...good, input: f32([31, 64]) }, /has batch=32 on axis 0, but input 'input' has batch=31|has \w+=\d+ on axis 0, but input/],
    [{ input: f32([0, 64]), labels: i64([], [0]) }, /'input' is empty/],
    [{ ...good, labels: i64(Array.from({ length: 32 }, (_, i) => (i === 5 ? 10 : 1))) }, /class label 10 at flat index 5; labels must be in \[0, 10\)/],
    [{ ...good, labels: i64(Array.from({ length: 32 }, (_, i) => (i === 0 ? -1 : 1))) }, /class label -1/],
    [{ ...good, input: { dims: [32, 64] } }, /must be an ort.Tensor of float32/],
    [null, /feeds must be an object/],
  ];
  for (const [feeds, message] of cases) {
    await assert.rejects(sess.step(feeds), (err) => {
      assert.ok(err instanceof FeedError, `${err}`);
      assert.match(err.message, message);
      return true;
    });
  }
  assert.equal(sess.globalStep, 0);
  assert.equal(worstStateDiff(sess.tensors(), before).worst, 0);
  const fresh = await TrainingSession.create(fixture("mlp.onnx"), { ort });
  assert.equal(await sess.step(good), await fresh.step(good));
  assert.equal(worstStateDiff(sess.tensors(), fresh.tensors()).worst, 0);
});

test("a learning-rate table past its end: an error before the step, state unchanged", async () => {
  const sess = await TrainingSession.create(fixture("mlp_table.onnx"), { ort });
  const steps = await batches("mlp_table");
  for (const b of steps) await sess.step(b);
  const before = sess.tensors();
  await assert.rejects(sess.step(steps[0]), LearningRateTableExhausted);
  assert.equal(sess.globalStep, 6);
  assert.equal(worstStateDiff(sess.tensors(), before).worst, 0);
});
