// Training-step time: adamax-onnx's JS TrainingSession in onnxruntime-node vs the Python
// TrainingSession (same model, batches and thread count, interleaved rounds, medians), and a
// naive InferenceSession loop (outputs allocated by onnxruntime each step) for reference.
//
//   node bench/step.js [--threads N] [--rounds R] [--steps S] [--out FILE.json]
//
// Needs the fixtures (python js/test/make_fixtures.py) and a Python with adamax-onnx
// (ADAMAX_PYTHON, default ../.venv/bin/python).
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { TrainingSession } from "../src/index.js";
import { ELEM, parseModel, tensorData } from "../src/proto.js";
import { FIXTURES, ROOT, batches, fixture, ort, python } from "../test/helpers.js";

const { values: args } = parseArgs({
  options: {
    threads: { type: "string", default: "1" },
    rounds: { type: "string", default: "9" },
    steps: { type: "string", default: "200" },
    out: { type: "string" },
  },
});
const THREADS = Number(args.threads);
const ROUNDS = Number(args.rounds);
const STEPS = Number(args.steps);
const sessionOptions = {
  intraOpNumThreads: THREADS,
  interOpNumThreads: 1,
  executionMode: "sequential",
  logSeverityLevel: 3,
  extra: { session: { intra_op: { allow_spinning: "0" } } },
};

const PY = `
import sys, time, numpy as np, onnxruntime as ort, adamax_onnx as ax
model, data, threads = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
so.log_severity_level = 3
sess = ax.TrainingSession(model, sess_options=so)
steps = sorted({int(k.split("/")[0]) for k in data.files})
feeds = [{k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")} for i in steps]
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t0 = time.perf_counter()
    for i in range(n):
        sess.step(feeds[i % len(feeds)])
    print((time.perf_counter() - t0) * 1000 / n, flush=True)
`;

function pythonWorker(name) {
  const proc = spawn(python(), ["-c", PY, join(FIXTURES, `${name}.onnx`), join(FIXTURES, `${name}.batches.npz`), String(THREADS)], {
    cwd: ROOT,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = [];
  let waiting = null;
  let buf = "";
  proc.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
    if (waiting && lines.length) waiting(lines.shift());
  });
  const next = () =>
    new Promise((resolve) => {
      if (lines.length) resolve(lines.shift());
      else waiting = (l) => ((waiting = null), resolve(l));
    });
  return {
    ready: next(),
    async round(n) {
      proc.stdin.write(`${n}\n`);
      return Number(await next());
    },
    close: () => proc.stdin.end(),
  };
}

async function naiveLoop(name) {
  const bytes = fixture(`${name}.onnx`);
  const model = parseModel(bytes);
  const contract = JSON.parse(model.metadata["adamax_onnx.contract"]);
  const inits = new Map(model.graph.initializers.map((x) => [x.name, x]));
  let state = {};
  for (const [input, source] of Object.entries(contract.initial)) {
    const h = inits.get(source);
    state[input] = new ort.Tensor(ELEM[h.dataType].ort, tensorData(bytes, h), h.dims);
  }
  const sess = await ort.InferenceSession.create(bytes, sessionOptions);
  const carried = Object.keys(state).filter((n) => sess.outputNames.includes(`${n}.updated`));
  return async (feeds) => {
    const out = await sess.run({ ...state, ...feeds });
    state = { ...state };
    for (const n of carried) state[n] = out[`${n}.updated`];
    return out.loss.data[0];
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const results = { threads: THREADS, steps_per_round: STEPS, rounds: ROUNDS, onnxruntime_node: ort.env.versions?.node, cases: {} };
for (const name of ["mlp", "cnn"]) {
  const data = await batches(name);
  const js = await TrainingSession.create(fixture(`${name}.onnx`), { ort, sessionOptions });
  const naive = await naiveLoop(name);
  const py = pythonWorker(name);
  await py.ready;
  const time = async (fn) => {
    const t0 = performance.now();
    for (let i = 0; i < STEPS; i++) await fn(data[i % data.length]);
    return (performance.now() - t0) / STEPS;
  };
  const samples = { js: [], naive: [], python: [] };
  for (let r = -2; r < ROUNDS; r++) {
    const order = [
      async () => samples.js.push(await time((f) => js.step(f))),
      async () => samples.naive.push(await time(naive)),
      async () => samples.python.push(await py.round(STEPS)),
    ];
    for (let k = 0; k < 3; k++) await order[(k + r + 3) % 3]();
    if (r < 0) for (const s of Object.values(samples)) s.length = 0; // warm-up rounds
  }
  py.close();
  const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)]));
  results.cases[name] = {
    ms_per_step: m,
    js_over_python: m.js / m.python,
    naive_over_python: m.naive / m.python,
    samples,
  };
  console.log(
    `${name}: JS TrainingSession ${m.js.toFixed(3)} ms/step, naive node loop ${m.naive.toFixed(3)}, ` +
      `Python TrainingSession ${m.python.toFixed(3)} -> JS/Python ${(m.js / m.python).toFixed(2)}x ` +
      `(naive ${(m.naive / m.python).toFixed(2)}x), ${THREADS} thread(s)`,
  );
}
if (args.out) writeFileSync(args.out, JSON.stringify(results, null, 1));
