// The literal recipe, no adamax-onnx runtime: a plain onnxruntime-node InferenceSession loop on
// a model built with the defaults. Start from the "<input>.initial" initializers (named in
// the contract), feed state, learning rates and the batch, feed each X.updated back as X.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseModel, tensorData, ELEM } from "../src/proto.js";
import { CASES, batches, fixture, loadNpz, ort, worstStateDiff } from "./helpers.js";

for (const c of CASES.filter((x) => ["mlp_table", "cnn", "cnn_bn_dropout", "transformer", "mlp_loss_scale"].includes(x.name))) {
  test(`${c.name}: a plain InferenceSession loop trains like Python`, async (t) => {
    const bytes = fixture(`${c.name}.onnx`);
    const model = parseModel(bytes);
    const contract = JSON.parse(model.metadata["adamax_onnx.contract"]);
    const inits = new Map(model.graph.initializers.map((x) => [x.name, x]));
    const state = {};
    for (const [input, source] of Object.entries(contract.initial)) {
      const h = inits.get(source);
      state[input] = new ort.Tensor(ELEM[h.dataType].ort, tensorData(bytes, h), h.dims);
    }
    const sess = await ort.InferenceSession.create(bytes);
    // every state input is visible and required (no defaults the binding could hide)
    for (const name of Object.keys(contract.initial)) assert.ok(sess.inputNames.includes(name), name);
    const carried = Object.keys(state).filter((n) => sess.outputNames.includes(`${n}.updated`));
    const steps = await batches(c.name);
    const ref = await loadNpz(fixture(`${c.name}.ref.npz`));
    for (let i = 0; i < c.steps; i++) {
      const out = await sess.run({ ...state, ...steps[i] });
      const want = ref.__losses__.data[i];
      const loss = out[contract.loss].data[0];
      assert.ok(Number.isNaN(want) ? Number.isNaN(loss) : Math.abs(loss - want) <= 1e-6, `step ${i}`);
      for (const n of carried) state[n] = out[`${n}.updated`];
    }
    const { worst } = worstStateDiff(state, ref);
    t.diagnostic(`max abs state difference to Python: ${worst}`);
    assert.ok(worst <= 1e-6);
  });
}

test("a loop that forgets the state gets an error, not a wrong step", async () => {
  const sess = await ort.InferenceSession.create(fixture("mlp.onnx"));
  const [b] = await batches("mlp");
  await assert.rejects(sess.run(b), /input 'fc1.weight' is missing in 'feeds'/);
});
