// TrainingSession for onnxruntime-node and onnxruntime-web: one InferenceSession.run per step,
// shaped like the Python adamax_onnx.TrainingSession.

import { CheckpointError, readCheckpoint, sha256Hex, writeCheckpoint } from "./npz.js";
import {
  ELEM,
  ORT_TO_ELEM,
  encodeTensor,
  fields,
  lenField,
  parseModel,
  rewrite,
  tensorData,
  utf8enc,
  Writer,
} from "./proto.js";
import { dumpsPy, parseRaw } from "./pyjson.js";

export const CONTRACT_KEY = "adamax_onnx.contract";
export const INFERENCE_GRAPH_KEY = "adamax_onnx.inference_graph";
export const GLOBAL_STEP = "adamax.global_step";
export const BETA1_POWER = "adamax.beta1_power";
export const LOSS_SCALE = "adamax.loss_scale";

export class FeedError extends Error {
  constructor(message) {
    super(message);
    this.name = "FeedError";
  }
}
export class ModelError extends Error {
  constructor(message) {
    super(message);
    this.name = "ModelError";
  }
}
export class LearningRateTableExhausted extends Error {
  constructor(message) {
    super(message);
    this.name = "LearningRateTableExhausted";
  }
}

const updated = (name) => `${name}.updated`;

function stateInputs(contract) {
  const names = [...contract.params];
  for (const p of contract.params) names.push(`${p}.adamax.m`, `${p}.adamax.v`);
  return [...names, GLOBAL_STEP, BETA1_POWER, ...(contract.extra_state ?? [])];
}

function count(dims) {
  return dims.reduce((a, b) => a * b, 1);
}

function fmtDims(dims) {
  return `[${dims.map((d) => (d === null ? "?" : typeof d === "string" ? d : String(d))).join(", ")}]`;
}

/**
 * float16 data as its bits: onnxruntime-web turns a float16 tensor's Uint16Array into a
 * Float16Array where the browser has one, and copying between the two would convert values.
 */
function bits(data) {
  return data?.constructor?.name === "Float16Array"
    ? new Uint16Array(data.buffer, data.byteOffset, data.length)
    : data;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function valueInfoName(buf, f) {
  for (const s of fields(buf, f.start, f.end)) {
    if (s.field === 1) return new TextDecoder().decode(buf.subarray(s.start, s.end));
  }
  return "";
}

function decodeBase64(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Train a model built by adamax-onnx (`build_training_model`, or the CLI's `build`) with
 * onnxruntime's JavaScript API: `onnxruntime-node` or `onnxruntime-web`.
 */
export class TrainingSession {
  /**
   * @param {Uint8Array|ArrayBuffer} modelBytes the built training model (.onnx bytes).
   * @param {object} options `ort`: the onnxruntime module (`import * as ort from
   *   "onnxruntime-node"` or `"onnxruntime-web"`); `sessionOptions`: passed to
   *   InferenceSession.create (execution providers, threads); `pack` (default true): float
   *   state of one type as one flat tensor in the session (fewer tensors per run).
   */
  static async create(modelBytes, options = {}) {
    // The module is passed in, not imported: onnxruntime-node (CommonJS) and an ESM import of
    // onnxruntime-common are two instances with two backend registries.
    const self = new TrainingSession(options.ort, modelBytes, options.pack ?? true);
    const ort = options.ort;
    self.session = await ort.InferenceSession.create(self._runnable, options.sessionOptions ?? {});
    self._runnable = null;
    self._prepare();
    self._initial = null; // copied into the session's two state sets
    return self;
  }

  constructor(ort, modelBytes, pack = true) {
    if (!ort?.InferenceSession || !ort?.Tensor) {
      throw new ModelError(
        "options.ort must be the onnxruntime module: TrainingSession.create(bytes, { ort }) with " +
          '`import * as ort from "onnxruntime-node"` (or "onnxruntime-web")',
      );
    }
    this.ort = ort;
    const bytes = modelBytes instanceof Uint8Array ? modelBytes : new Uint8Array(modelBytes);
    let model;
    try {
      model = parseModel(bytes);
    } catch (err) {
      throw new ModelError(`the given bytes are not a serialized ONNX model: ${err.message}`);
    }
    if (model.hasTrainingInfo) {
      throw new ModelError(
        "this is a trainable file (export_trainable_model, training_info form); give the " +
          "one-run-per-step training model written by build_training_model or `adamax-onnx build`",
      );
    }
    const text = model.metadata[CONTRACT_KEY];
    if (text === undefined) {
      throw new ModelError(
        "this model was not built by adamax-onnx (no 'adamax_onnx.contract' metadata); build it " +
          "with build_training_model or `adamax-onnx build`",
      );
    }
    const contract = JSON.parse(text);
    if (contract.format !== 1 && contract.format !== 2) {
      throw new ModelError(`model metadata ${CONTRACT_KEY} has format ${contract.format}; this reads 1 and 2`);
    }
    this.contract = contract;
    this._rawContract = parseRaw(text);
    this._model = model;
    this._stateNames = stateInputs(contract);
    this._lrNames = Object.values(contract.lr_inputs ?? {});
    const initial = contract.initial ?? {};
    const inits = new Map(model.graph.initializers.map((t) => [t.name, t]));
    const inputs = new Map(model.graph.inputs.map((i) => [i.name, i]));
    this._inputs = inputs;
    // Initial values: "<input>.initial" (or, in models written before that form, the input's
    // own default). Both kinds are dropped from the model the session gets, so every state
    // input is a required input there and the fed values are the ones used.
    const drop = new Set();
    this._initial = {};
    for (const name of [...this._stateNames, ...this._lrNames]) {
      const source = initial[name] ?? name;
      const t = inits.get(source);
      if (!t) throw new ModelError(`built model lacks an initial value for input ${name}`);
      if (!inputs.has(name)) throw new ModelError(`built model has no input ${name}`);
      this._initial[name] = { type: ELEM[t.dataType]?.ort, data: tensorData(bytes, t), dims: t.dims };
      drop.add(source);
    }
    // Float state of one element type travels as one flat tensor: the session's model slices
    // it into the state inputs and concatenates the updated state into one output (exact
    // copies, same numbers). onnxruntime's JS bindings pay per input and output tensor, so a
    // step then moves 3-4 tensors instead of 3 per parameter.
    this._packs = pack ? this._planPacks() : [];
    const packed = new Set(this._packs.flatMap((g) => g.members.map((m) => m.name)));
    const packedOut = new Set([...packed].map(updated));
    this._carried = [...this._packs.map((g) => g.name), ...this._stateNames.filter((n) => !packed.has(n))];
    const extra = this._packEdits();
    const byStart = new Map(model.graph.initializers.map((t) => [t.tagStart, t.name]));
    this._runnable = rewrite(bytes, 0, bytes.length, (f) => {
      if (f.field === 14) return null; // metadata: onnxruntime does not need it
      if (f.field !== 7) return undefined;
      let first = true;
      const graph = rewrite(bytes, f.start, f.end, (g) => {
        if (g.field === 1 && first) {
          first = false;
          return concat([extra.head, bytes.subarray(g.tagStart, g.end)]);
        }
        if (g.field === 11 || g.field === 12) {
          const name = valueInfoName(bytes, g);
          return (g.field === 11 ? packed : packedOut).has(name) ? null : undefined;
        }
        if (g.field !== 5) return undefined;
        return drop.has(byStart.get(g.tagStart)) ? null : undefined;
      });
      return lenField(7, concat([graph, extra.tail]));
    });
    this._labelRanges = this._findLabelRanges();
    this._tableLimit = Object.keys(contract.tables ?? {}).length
      ? Math.min(...Object.values(contract.tables))
      : null;
  }

  _planPacks() {
    const taken = new Set([
      ...this._model.graph.inputs.map((i) => i.name),
      ...this._model.graph.outputs.map((o) => o.name),
      ...this._model.graph.initializers.map((t) => t.name),
      ...this._model.graph.nodes.flatMap((n) => n.outputs),
      ...this._model.graph.nodes.map((n) => n.name),
    ]);
    const groups = new Map();
    for (const name of this._stateNames) {
      const init = this._initial[name];
      if (!["float32", "float16", "float64"].includes(init.type)) continue;
      if (!groups.has(init.type)) groups.set(init.type, []);
      groups.get(init.type).push({ name, dims: init.dims, size: init.data.length });
    }
    const packs = [];
    for (const [type, members] of groups) {
      if (members.length < 2) continue;
      const name = `adamax.packed.${type}`;
      if (taken.has(name) || taken.has(updated(name)) || [...taken].some((n) => n.startsWith(`${name}/`))) continue;
      let offset = 0;
      for (const m of members) {
        m.offset = offset;
        offset += m.size;
      }
      packs.push({ name, type, elem: ORT_TO_ELEM[type], members, size: offset });
    }
    return packs;
  }

  /** Nodes, initializers, inputs and outputs that slice and gather the packed state. */
  _packEdits() {
    const head = new Writer();
    const tail = new Writer();
    const int64 = (name, values) => lenField(5, encodeTensor(name, 7, [values.length], BigInt64Array.from(values.map(BigInt))));
    let prefix = "";
    let count = 0;
    const node = (op, inputs, outputs, attrs = {}) => {
      const w = new Writer();
      for (const i of inputs) w.string(1, i);
      for (const o of outputs) w.string(2, o);
      w.string(3, `${prefix}node${count++}`); // the pack's prefix: no name of the model starts so
      w.string(4, op);
      for (const [k, v] of Object.entries(attrs)) w.len(5, new Writer().string(1, k).int(3, v).int(20, 2).finish());
      return w.finish();
    };
    const vinfo = (name, elem, dims) => {
      const shape = new Writer();
      for (const d of dims) shape.len(1, new Writer().int(1, d).finish());
      const tensorType = new Writer().int(1, elem).len(2, shape.finish()).finish();
      return new Writer().string(1, name).len(2, new Writer().len(1, tensorType).finish()).finish();
    };
    for (const g of this._packs) {
      const p = `${g.name}/`;
      prefix = p;
      tail.bytes(int64(`${p}axes`, [0]));
      tail.bytes(int64(`${p}flat`, [-1]));
      const pieces = [];
      for (const m of g.members) {
        tail.bytes(int64(`${p}${m.name}/start`, [m.offset]));
        tail.bytes(int64(`${p}${m.name}/end`, [m.offset + m.size]));
        tail.bytes(int64(`${p}${m.name}/shape`, m.dims));
        head.len(1, node("Slice", [g.name, `${p}${m.name}/start`, `${p}${m.name}/end`, `${p}axes`], [`${p}${m.name}/flat`]));
        head.len(1, node("Reshape", [`${p}${m.name}/flat`, `${p}${m.name}/shape`], [m.name]));
        tail.len(1, node("Reshape", [updated(m.name), `${p}flat`], [`${p}${m.name}/updated`]));
        pieces.push(`${p}${m.name}/updated`);
      }
      tail.len(1, node("Concat", pieces, [updated(g.name)], { axis: 0 }));
      tail.len(11, vinfo(g.name, g.elem, [g.size]));
      tail.len(12, vinfo(updated(g.name), g.elem, [g.size]));
    }
    return { head: head.finish(), tail: tail.finish() };
  }

  _viewsOf(k) {
    if (!this._views[k]) this._refreshViews(k);
    return this._views[k];
  }

  /** Per-state-name tensors viewing the packed buffers of set `k` (no copy). */
  _refreshViews(k) {
    const views = {};
    for (const name of this._carried) views[name] = this._sets[k][name];
    for (const g of this._packs) {
      const flat = this._sets[k][g.name].data;
      for (const m of g.members) {
        views[m.name] = new this.ort.Tensor(g.type, flat.subarray(m.offset, m.offset + m.size), m.dims);
      }
    }
    this._views[k] = views;
  }

  _findLabelRanges() {
    const g = this._model.graph;
    const shapes = new Map();
    for (const vi of [...g.valueInfo, ...g.outputs, ...g.inputs]) shapes.set(vi.name, vi.dims ?? []);
    const ranges = {};
    for (const node of g.nodes) {
      if (node.opType !== "SoftmaxCrossEntropyLoss" || node.inputs.length < 2) continue;
      const label = node.inputs[1];
      const scores = shapes.get(node.inputs[0]) ?? [];
      if (!this.contract.data_inputs.includes(label) || scores.length < 2) continue;
      if (typeof scores[1] !== "number" || !scores[1]) continue;
      ranges[label] = [scores[1], node.attrs.ignore_index ?? null];
    }
    return ranges;
  }

  _prepare() {
    const ort = this.ort;
    const tensor = (a) => new ort.Tensor(a.type, a.data.slice(), a.dims);
    // Two sets of state tensors: a step reads one and writes the other (preallocated outputs),
    // then the roles flip. Per step only the batch goes in and the loss comes out.
    this._sets = [{}, {}];
    for (const set of this._sets) {
      for (const name of this._carried) {
        const g = this._packs.find((x) => x.name === name);
        if (!g) {
          set[name] = tensor(this._initial[name]);
          continue;
        }
        const flat = new (ELEM[g.elem].array)(g.size);
        for (const m of g.members) flat.set(this._initial[m.name].data, m.offset);
        set[name] = new ort.Tensor(g.type, flat, [g.size]);
      }
    }
    this._views = [null, null];
    this._refreshViews(0);
    this._refreshViews(1);
    this._lr = {};
    for (const name of this._lrNames) this._lr[name] = tensor(this._initial[name]);
    const outputs = new Map(this._model.graph.outputs.map((o) => [o.name, o]));
    this._lossName = this.contract.loss ?? null;
    const lossType = this._lossName ? ELEM[outputs.get(this._lossName)?.elemType]?.ort : null;
    this._lossTensors = this._lossName
      ? [0, 1].map(() => new ort.Tensor(lossType ?? "float32", new (ELEM[ORT_TO_ELEM[lossType ?? "float32"]].array)(1), []))
      : null;
    this._overflowName = this.contract.overflow ?? null;
    this._overflowTensors = this._overflowName
      ? [0, 1].map(() => new ort.Tensor("bool", new Uint8Array(1), []))
      : null;
    this._feeds = [0, 1].map((src) => ({ ...this._sets[src], ...this._lr }));
    this._fetches = [0, 1].map((src) => {
      const f = {};
      for (const name of this._carried) f[updated(name)] = this._sets[1 - src][name];
      if (this._lossName) f[this._lossName] = this._lossTensors[src];
      if (this._overflowName) f[this._overflowName] = this._overflowTensors[src];
      return f;
    });
    this._cur = 0;
    this._globalStep = Number(this._viewsOf(0)[GLOBAL_STEP].data[0]);
    this.lastOverflow = false;
    this._preallocated = null; // decided at the first step: does this runtime fill our outputs?
    this._fetchNames = Object.keys(this._fetches[0]);
    const sessInputs = new Set(this.session.inputNames);
    const missing = [...this._carried, ...this._lrNames, ...this.contract.data_inputs].filter(
      (n) => !sessInputs.has(n),
    );
    if (missing.length) {
      throw new ModelError(`onnxruntime does not expose input(s) ${JSON.stringify(missing)} of the model`);
    }
  }

  // -- feeds --------------------------------------------------------------------------------------
  _validate(feeds) {
    if (feeds === null || typeof feeds !== "object" || Array.isArray(feeds)) {
      throw new FeedError(`feeds must be an object of input name -> ort.Tensor, got ${typeof feeds}`);
    }
    const expected = this.contract.data_inputs;
    const given = Object.keys(feeds);
    const missing = expected.filter((n) => !given.includes(n));
    const extra = given.filter((n) => !expected.includes(n));
    if (missing.length || extra.length) {
      const parts = [];
      if (missing.length) parts.push(`missing input(s) ${JSON.stringify(missing)}`);
      if (extra.length) parts.push(`unexpected input(s) ${JSON.stringify(extra)}`);
      throw new FeedError(`${parts.join("; ")}; a step takes exactly ${JSON.stringify(expected)}`);
    }
    const symbols = new Map();
    for (const name of expected) {
      const spec = this._inputs.get(name);
      const t = feeds[name];
      const want = ELEM[spec.elemType]?.ort;
      if (!t || typeof t !== "object" || !("dims" in t) || !("type" in t) || !("data" in t)) {
        throw new FeedError(`input '${name}' must be an ort.Tensor of ${want}, got ${typeof t}`);
      }
      if (want && t.type !== want) {
        throw new FeedError(`input '${name}' has type ${t.type}, expected ${want}`);
      }
      const dims = t.dims;
      if (spec.dims && spec.dims.length !== dims.length) {
        throw new FeedError(
          `input '${name}' has shape ${fmtDims(dims)}, expected rank ${spec.dims.length} (${fmtDims(spec.dims)})`,
        );
      }
      (spec.dims ?? []).forEach((d, axis) => {
        const got = dims[axis];
        if (typeof d === "number" && d !== got) {
          throw new FeedError(
            `input '${name}' has shape ${fmtDims(dims)}, expected ${fmtDims(spec.dims)} (axis ${axis} must be ${d})`,
          );
        }
        if (typeof d === "string" && d) {
          const seen = symbols.get(d);
          if (seen && seen[0] !== got) {
            throw new FeedError(
              `input '${name}' has ${d}=${got} on axis ${axis}, but input '${seen[1]}' has ${d}=${seen[0]}`,
            );
          }
          if (!seen) symbols.set(d, [got, name]);
        }
      });
      if (count(dims) === 0) {
        throw new FeedError(
          `input '${name}' is empty (shape ${fmtDims(dims)}): a step needs at least one example`,
        );
      }
      if (t.data.length !== count(dims)) {
        throw new FeedError(`input '${name}' holds ${t.data.length} values for shape ${fmtDims(dims)}`);
      }
    }
    for (const [name, [classes, ignore]] of Object.entries(this._labelRanges)) {
      const data = feeds[name].data;
      const big = typeof data[0] === "bigint";
      const hi = big ? BigInt(classes) : classes;
      const zero = big ? 0n : 0;
      const ign = ignore === null ? null : big ? BigInt(ignore) : ignore;
      for (let i = 0; i < data.length; i++) {
        const v = data[i];
        if ((v < zero || v >= hi) && v !== ign) {
          throw new FeedError(
            `input '${name}' holds class label ${v} at flat index ${i}; labels must be in [0, ${classes})` +
              (ignore !== null ? ` or equal ignore_index ${ignore}` : ""),
          );
        }
      }
    }
  }

  _checkTables() {
    if (this._tableLimit !== null && this._globalStep >= this._tableLimit) {
      throw new LearningRateTableExhausted(
        `global_step ${this._globalStep} is past the end of the learning-rate table (length ` +
          `${this._tableLimit}); parameters and state are unchanged. Use a longer table or a schedule`,
      );
    }
  }

  /**
   * One training step: validates `feeds` (input name -> ort.Tensor), runs the model once and
   * returns the (unscaled) loss, or null for an optimizer model. Throws FeedError or
   * LearningRateTableExhausted before anything runs; a failed run leaves the state unchanged.
   */
  async step(feeds) {
    this._validate(feeds);
    this._checkTables();
    const src = this._cur;
    const runFeeds = this._feeds[src];
    for (const name of this.contract.data_inputs) runFeeds[name] = feeds[name];
    const fetches = this._fetches[src];
    let out;
    try {
      if (this._preallocated === false) {
        out = await this.session.run(runFeeds, this._fetchNames);
        this._adopt(out, src);
      } else {
        const probe = fetches[updated(GLOBAL_STEP)].data;
        if (this._preallocated === null) probe[0] = -1n; // a sentinel no step writes
        try {
          out = await this.session.run(runFeeds, fetches);
        } catch (err) {
          if (this._preallocated === true) throw err;
          // This runtime refuses preallocated outputs: let it allocate them.
          this._preallocated = false;
          out = await this.session.run(runFeeds, this._fetchNames);
          this._adopt(out, src);
        }
        if (this._preallocated === null) {
          // Did onnxruntime write into our tensors (node does)? If not (onnxruntime-web on the
          // CPU leaves them as they were), run the step again letting it allocate the outputs:
          // the inputs (the current set) are untouched, so the rerun is the same step.
          this._preallocated = probe[0] !== -1n;
          if (!this._preallocated) {
            out = await this.session.run(runFeeds, this._fetchNames);
            this._adopt(out, src);
          }
        }
      }
    } finally {
      for (const name of this.contract.data_inputs) delete runFeeds[name];
    }
    this._cur = 1 - src;
    this.lastOverflow = this._overflowName ? Boolean(out[this._overflowName].data[0]) : false;
    if (!this.lastOverflow) this._globalStep += 1;
    if (!this._lossName) return null;
    return Number(out[this._lossName].data[0]);
  }

  /** Outputs onnxruntime allocated itself become the next set (no copy). */
  _adopt(out, src) {
    const dst = 1 - src;
    for (const name of this._carried) {
      const t = out[updated(name)];
      const want = this._sets[dst][name];
      this._sets[dst][name] =
        t.dims.length === want.dims.length && t.dims.every((d, i) => d === want.dims[i])
          ? t
          : new this.ort.Tensor(t.type, t.data, want.dims); // chunk layout: same bytes
    }
    this._views[dst] = null; // rebuilt when read (_viewsOf): nothing allocated per step
    Object.assign(this._feeds[dst], this._sets[dst]);
  }

  // -- state access -----------------------------------------------------------------------------
  get globalStep() {
    return this._globalStep;
  }

  get lossScale() {
    if (!this._stateNames.includes(LOSS_SCALE)) return null;
    return Number(this._viewsOf(this._cur)[LOSS_SCALE].data[0]);
  }

  _copy(name) {
    const t = this._viewsOf(this._cur)[name];
    return new this.ort.Tensor(t.type, t.data.slice(), t.dims);
  }

  /** Current parameter values (copies, ort.Tensor), by name. */
  parameters() {
    return Object.fromEntries(this.contract.params.map((p) => [p, this._copy(p)]));
  }

  /** Optimizer state: globalStep, beta1Power, m and v per parameter (+ extra: loss scale). */
  state() {
    const s = {
      globalStep: Number(this._viewsOf(this._cur)[GLOBAL_STEP].data[0]),
      beta1Power: Number(this._viewsOf(this._cur)[BETA1_POWER].data[0]),
      m: Object.fromEntries(this.contract.params.map((p) => [p, this._copy(`${p}.adamax.m`)])),
      v: Object.fromEntries(this.contract.params.map((p) => [p, this._copy(`${p}.adamax.v`)])),
    };
    if (this.contract.extra_state?.length) {
      s.extra = Object.fromEntries(this.contract.extra_state.map((n) => [n, this._copy(n)]));
    }
    return s;
  }

  /** Every carried tensor (parameters, state, learning rates), by input name: copies. */
  tensors() {
    const out = {};
    for (const name of this._stateNames) out[name] = this._copy(name);
    for (const name of this._lrNames) {
      const t = this._lr[name];
      out[name] = new this.ort.Tensor(t.type, t.data.slice(), t.dims);
    }
    return out;
  }

  /** Overwrite parameters (optimizer state kept): name -> ort.Tensor of the same type and shape. */
  setParameters(values) {
    const unknown = Object.keys(values).filter((n) => !this.contract.params.includes(n));
    if (unknown.length) {
      throw new ModelError(`unknown parameter(s) ${JSON.stringify(unknown)}; parameters are ${JSON.stringify(this.contract.params)}`);
    }
    for (const [name, t] of Object.entries(values)) {
      const cur = this._viewsOf(this._cur)[name];
      if (t.type !== cur.type || t.dims.length !== cur.dims.length || t.dims.some((d, i) => d !== cur.dims[i])) {
        throw new ModelError(`parameter '${name}' must be ${cur.type}${fmtDims(cur.dims)}, got ${t.type}${fmtDims(t.dims)}`);
      }
    }
    for (const [name, t] of Object.entries(values)) bits(this._viewsOf(this._cur)[name].data).set(bits(t.data));
  }

  /** Current fixed learning rate of each group that has one, by group index. */
  get learningRates() {
    return Object.fromEntries(
      Object.entries(this.contract.lr_inputs ?? {}).map(([g, n]) => [Number(g), Number(this._lr[n].data[0])]),
    );
  }

  /** Change a fixed learning rate between steps (all fixed-lr groups, or one). */
  setLearningRate(value, group = null) {
    if (typeof value !== "number" || !(value >= 0)) {
      throw new RangeError(`learning rate must be a number >= 0, got ${value}`);
    }
    const groups = this.contract.lr_inputs ?? {};
    const targets = group === null ? Object.keys(groups) : [String(group)];
    for (const g of targets) {
      if (!(g in groups)) {
        throw new RangeError(`group ${g} has no fixed learning rate (fixed-lr groups: ${JSON.stringify(Object.keys(groups))})`);
      }
    }
    for (const g of targets) this._lr[groups[g]].data[0] = value;
  }

  // -- checkpoints ----------------------------------------------------------------------------------
  /** The model fingerprint Python's TrainingSession.identity() computes (same SHA-256). */
  async identity() {
    const cur = this._viewsOf(0);
    const doc = {
      kind: this._rawContract.kind,
      params: this.contract.params.map((n) => [n, [...cur[n].dims], `tensor(${ortToNumpyName(cur[n].type)})`]),
      hyper: this._rawContract.hyper,
      groups: this._rawContract.groups,
    };
    return sha256Hex(utf8enc.encode(dumpsPy(doc)));
  }

  /** The checkpoint (.npz bytes, the format of adamax_onnx/checkpoint.py) of the current state. */
  async saveCheckpoint() {
    const arrays = {};
    for (const [name, t] of Object.entries(this.tensors())) {
      arrays[name] = { type: t.type, data: t.data, dims: t.dims };
    }
    const meta = { identity: await this.identity(), params: this.contract.params, global_step: this._globalStep };
    return writeCheckpoint(arrays, meta);
  }

  /** Restore a checkpoint (bytes); one of another model is refused and nothing changes. */
  async loadCheckpoint(bytes) {
    const { arrays, meta } = await readCheckpoint(bytes);
    if (meta.identity !== (await this.identity())) {
      const theirs = JSON.stringify(meta.params);
      const mine = JSON.stringify(this.contract.params);
      throw new CheckpointError(
        "checkpoint belongs to another model: " +
          (theirs !== mine
            ? `its parameters are ${theirs}, this model's are ${mine}`
            : "same parameter names, but shapes, dtypes or optimizer settings differ"),
      );
    }
    const expected = new Set([...this._stateNames, ...this._lrNames]);
    const got = new Set(Object.keys(arrays));
    const diff = [...expected].filter((n) => !got.has(n)).concat([...got].filter((n) => !expected.has(n)));
    if (diff.length) {
      throw new CheckpointError(`checkpoint holds tensors ${JSON.stringify(diff.sort())} that do not match this model`);
    }
    const cur = this._viewsOf(this._cur);
    const targets = { ...Object.fromEntries(this._stateNames.map((n) => [n, cur[n]])), ...this._lr };
    for (const [name, t] of Object.entries(targets)) {
      const a = arrays[name];
      if (a.type !== t.type || a.dims.length !== t.dims.length || a.dims.some((d, i) => d !== t.dims[i])) {
        throw new CheckpointError(
          `checkpoint tensor '${name}' is ${a.type}${fmtDims(a.dims)}, this model needs ${t.type}${fmtDims(t.dims)}`,
        );
      }
    }
    const step = Number(arrays[GLOBAL_STEP].data[0]);
    if (meta.global_step !== step) {
      throw new CheckpointError(
        `checkpoint is inconsistent: its metadata says step ${meta.global_step} but its global_step tensor holds ${step}`,
      );
    }
    for (const [name, t] of Object.entries(targets)) bits(t.data).set(bits(arrays[name].data));
    this._globalStep = step;
  }

  // -- inference model ------------------------------------------------------------------------------
  /**
   * The original inference model with the current parameters, as .onnx bytes (the same bytes
   * Python's TrainingSession.export_inference_model writes).
   */
  exportInferenceModel() {
    if (this.contract.kind !== "training") {
      throw new ModelError("an optimizer model has no inference graph to export");
    }
    const text = this._model.metadata[INFERENCE_GRAPH_KEY];
    if (text === undefined) throw new ModelError("the model carries no inference graph");
    const payload = JSON.parse(text);
    const skeleton = decodeBase64(payload.graph);
    const buf = this._model.buf;
    const stored = new Map(this._model.graph.initializers.map((t) => [t.name, t]));
    // parameters, and extra state the inference graph reads (BatchNorm running statistics)
    const params = new Set([...this.contract.params, ...(this.contract.extra_state ?? [])]);
    const cur = this._viewsOf(this._cur);
    const graph = rewrite(skeleton, 0, skeleton.length, (f) => {
      if (f.field !== 5) return undefined;
      let name = "";
      let dataType = 0;
      const dims = [];
      for (const s of fields(skeleton, f.start, f.end)) {
        if (s.field === 8) name = new TextDecoder().decode(skeleton.subarray(s.start, s.end));
        else if (s.field === 2) dataType = s.value;
        else if (s.field === 1) dims.push(Number(s.value));
      }
      if (params.has(name)) {
        const t = cur[name];
        if (ELEM[dataType]?.ort !== t.type || count(dims) !== t.data.length) {
          throw new ModelError(`parameter '${name}' does not match the inference graph's initializer`);
        }
        return lenField(5, encodeTensor(name, dataType, dims, t.data));
      }
      const s = stored.get(name);
      if (!s) throw new ModelError(`no value for initializer '${name}' of the inference graph`);
      return lenField(5, buf.subarray(s.start, s.end));
    });
    const w = new Writer();
    w.int(1, payload.ir_version);
    w.string(2, payload.producer || "adamax-onnx");
    w.len(7, graph);
    for (const [domain, version] of payload.opset) {
      w.len(8, new Writer().string(1, domain).int(2, version).finish());
    }
    return w.finish();
  }

  async release() {
    await this.session?.release?.();
  }
}

function ortToNumpyName(type) {
  return { float32: "float", float64: "double", float16: "float16", int64: "int64", int32: "int32", int8: "int8", uint8: "uint8", bool: "bool" }[type];
}
