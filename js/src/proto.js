// A small protobuf wire-format reader/writer for the part of onnx.proto this package needs:
// ModelProto, GraphProto, NodeProto (op type, inputs, int attributes), ValueInfoProto (tensor
// type and shape), TensorProto (dims, data type, raw and typed data) and metadata entries.
// Messages are read lazily as byte ranges, so rewriting a model copies untouched fields as
// they are (a model's large initializers are never decoded unless asked for).

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

const utf8 = new TextDecoder("utf-8");
const utf8enc = new TextEncoder();

export class ProtoError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProtoError";
  }
}

/** Read a varint at `pos`: returns [value (Number, exact below 2^53, else BigInt), next]. */
function readVarint(buf, pos) {
  let result = 0;
  let shift = 0;
  let big = null;
  for (;;) {
    if (pos >= buf.length) throw new ProtoError("truncated varint");
    const b = buf[pos++];
    if (big === null && shift < 49) {
      result += (b & 0x7f) * 2 ** shift;
    } else {
      if (big === null) big = BigInt(result);
      big |= BigInt(b & 0x7f) << BigInt(shift);
    }
    if ((b & 0x80) === 0) break;
    shift += 7;
    if (shift > 70) throw new ProtoError("varint too long");
  }
  if (big !== null) {
    big = BigInt.asIntN(64, big);
    return [Number.isSafeInteger(Number(big)) ? Number(big) : big, pos];
  }
  return [result, pos];
}

/**
 * Iterate the fields of the message in buf[start, end).
 * Yields {field, wire, tagStart, start, end, value}: for length-delimited fields start/end are
 * the payload range; for varints value is the number.
 */
export function* fields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    const tagStart = pos;
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === WIRE_VARINT) {
      let value;
      [value, pos] = readVarint(buf, pos);
      yield { field, wire, tagStart, start: pos, end: pos, value };
    } else if (wire === WIRE_LEN) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > end) throw new ProtoError(`field ${field} runs past its message`);
      yield { field, wire, tagStart, start: pos, end: pos + len };
      pos += len;
    } else if (wire === WIRE_I64) {
      yield { field, wire, tagStart, start: pos, end: pos + 8 };
      pos += 8;
    } else if (wire === WIRE_I32) {
      yield { field, wire, tagStart, start: pos, end: pos + 4 };
      pos += 4;
    } else {
      throw new ProtoError(`unsupported wire type ${wire} (field ${field})`);
    }
    if (pos > end) throw new ProtoError("message truncated");
  }
}

function str(buf, f) {
  return utf8.decode(buf.subarray(f.start, f.end));
}

/** Packed or unpacked repeated varints of field `f`, appended to `out`. */
function varints(buf, f, out) {
  if (f.wire === WIRE_VARINT) {
    out.push(f.value);
  } else {
    let pos = f.start;
    while (pos < f.end) {
      let v;
      [v, pos] = readVarint(buf, pos);
      out.push(v);
    }
  }
}

// -- ONNX element types -------------------------------------------------------------------------
export const ELEM = {
  1: { ort: "float32", size: 4, array: Float32Array, npy: "<f4" },
  2: { ort: "uint8", size: 1, array: Uint8Array, npy: "|u1" },
  3: { ort: "int8", size: 1, array: Int8Array, npy: "|i1" },
  6: { ort: "int32", size: 4, array: Int32Array, npy: "<i4" },
  7: { ort: "int64", size: 8, array: BigInt64Array, npy: "<i8" },
  9: { ort: "bool", size: 1, array: Uint8Array, npy: "|b1" },
  10: { ort: "float16", size: 2, array: Uint16Array, npy: "<f2" },
  11: { ort: "float64", size: 8, array: Float64Array, npy: "<f8" },
};
export const ORT_TO_ELEM = Object.fromEntries(Object.entries(ELEM).map(([k, v]) => [v.ort, +k]));

// -- reading --------------------------------------------------------------------------------------
function parseValueInfo(buf, range) {
  const out = { name: "", elemType: 0, dims: null };
  for (const f of fields(buf, range.start, range.end)) {
    if (f.field === 1) out.name = str(buf, f);
    else if (f.field === 2) {
      for (const t of fields(buf, f.start, f.end)) {
        if (t.field !== 1) continue; // tensor_type
        for (const tt of fields(buf, t.start, t.end)) {
          if (tt.field === 1) out.elemType = tt.value;
          else if (tt.field === 2) {
            out.dims = [];
            for (const d of fields(buf, tt.start, tt.end)) {
              if (d.field !== 1) continue;
              let dim = null;
              for (const dv of fields(buf, d.start, d.end)) {
                if (dv.field === 1) dim = Number(dv.value);
                else if (dv.field === 2) dim = str(buf, dv);
              }
              out.dims.push(dim);
            }
          }
        }
      }
    }
  }
  return out;
}

/** TensorProto header: name, data type, dims, and where the message lies. */
export function parseTensorHeader(buf, range) {
  const t = { name: "", dataType: 0, dims: [], start: range.start, end: range.end };
  for (const f of fields(buf, range.start, range.end)) {
    if (f.field === 8) t.name = str(buf, f);
    else if (f.field === 2) t.dataType = f.value;
    else if (f.field === 1) varints(buf, f, t.dims);
    else if (f.field === 14 && f.value === 1) t.external = true;
  }
  t.dims = t.dims.map(Number);
  return t;
}

/** The values of a TensorProto as a fresh typed array of its element type. */
export function tensorData(buf, header) {
  const elem = ELEM[header.dataType];
  if (!elem) throw new ProtoError(`tensor ${header.name}: unsupported data type ${header.dataType}`);
  if (header.external) throw new ProtoError(`tensor ${header.name}: external data is not supported`);
  const count = header.dims.reduce((a, b) => a * b, 1);
  const out = new elem.array(count);
  const bytes = new Uint8Array(out.buffer);
  let filled = false;
  const typed = [];
  for (const f of fields(buf, header.start, header.end)) {
    if (f.field === 9) {
      if (f.end - f.start !== count * elem.size) {
        throw new ProtoError(`tensor ${header.name}: raw_data has ${f.end - f.start} bytes`);
      }
      bytes.set(buf.subarray(f.start, f.end));
      filled = true;
    } else if (f.field === 4 || f.field === 10) {
      // float_data (fixed32) / double_data (fixed64), packed or not
      const size = f.field === 4 ? 4 : 8;
      const view = new DataView(buf.buffer, buf.byteOffset);
      if (f.wire === WIRE_LEN) {
        for (let p = f.start; p < f.end; p += size) {
          typed.push(size === 4 ? view.getFloat32(p, true) : view.getFloat64(p, true));
        }
      } else {
        typed.push(size === 4 ? view.getFloat32(f.start, true) : view.getFloat64(f.start, true));
      }
    } else if (f.field === 5 || f.field === 7 || f.field === 11) {
      varints(buf, f, typed); // int32_data (also float16/bool/int8/uint8) / int64 / uint64
    }
  }
  if (!filled) {
    if (typed.length !== count) {
      throw new ProtoError(`tensor ${header.name}: ${typed.length} values for ${count} elements`);
    }
    for (let i = 0; i < count; i++) {
      out[i] = elem.array === BigInt64Array ? BigInt(typed[i]) : Number(typed[i]);
    }
  }
  return out;
}

function parseNode(buf, range) {
  const node = { name: "", inputs: [], outputs: [], opType: "", domain: "", attrs: {} };
  for (const f of fields(buf, range.start, range.end)) {
    if (f.field === 3) node.name = str(buf, f);
    else if (f.field === 1) node.inputs.push(str(buf, f));
    else if (f.field === 2) node.outputs.push(str(buf, f));
    else if (f.field === 4) node.opType = str(buf, f);
    else if (f.field === 7) node.domain = str(buf, f);
    else if (f.field === 5) {
      let name = "";
      let i = null;
      for (const a of fields(buf, f.start, f.end)) {
        if (a.field === 1) name = str(buf, a);
        else if (a.field === 3) i = a.value;
      }
      if (i !== null) node.attrs[name] = Number(i);
    }
  }
  return node;
}

/** The parts of a GraphProto this package reads (nodes only when `withNodes`). */
export function parseGraph(buf, start, end, withNodes = true) {
  const g = { inputs: [], outputs: [], valueInfo: [], initializers: [], nodes: [], start, end };
  for (const f of fields(buf, start, end)) {
    if (f.field === 11) g.inputs.push(parseValueInfo(buf, f));
    else if (f.field === 12) g.outputs.push(parseValueInfo(buf, f));
    else if (f.field === 13) g.valueInfo.push(parseValueInfo(buf, f));
    else if (f.field === 5) {
      const t = parseTensorHeader(buf, f);
      t.tagStart = f.tagStart;
      g.initializers.push(t);
    } else if (f.field === 1 && withNodes) g.nodes.push(parseNode(buf, f));
  }
  return g;
}

/** ModelProto: graph, metadata, opsets; `fields` keeps every top-level field's byte range. */
export function parseModel(buf) {
  if (!(buf instanceof Uint8Array)) buf = new Uint8Array(buf);
  const model = { buf, metadata: {}, opsets: [], irVersion: 0, producer: "", top: [] };
  let graph = null;
  for (const f of fields(buf)) {
    model.top.push(f);
    if (f.field === 1) model.irVersion = Number(f.value);
    else if (f.field === 2) model.producer = str(buf, f);
    else if (f.field === 7) graph = f;
    else if (f.field === 8) {
      const o = { domain: "", version: 0 };
      for (const s of fields(buf, f.start, f.end)) {
        if (s.field === 1) o.domain = str(buf, s);
        else if (s.field === 2) o.version = Number(s.value);
      }
      model.opsets.push(o);
    } else if (f.field === 14) {
      let key = "";
      let value = "";
      for (const s of fields(buf, f.start, f.end)) {
        if (s.field === 1) key = str(buf, s);
        else if (s.field === 2) value = str(buf, s);
      }
      model.metadata[key] = value;
    } else if (f.field === 20) model.hasTrainingInfo = true;
  }
  if (!graph) throw new ProtoError("the bytes hold no ONNX graph (is this an .onnx model?)");
  model.graph = parseGraph(buf, graph.start, graph.end);
  model.graphField = graph;
  return model;
}

// -- writing --------------------------------------------------------------------------------------
export class Writer {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }
  bytes(b) {
    this.chunks.push(b);
    this.length += b.length;
    return this;
  }
  varint(v) {
    let big = BigInt.asUintN(64, BigInt(v));
    const out = [];
    do {
      let b = Number(big & 0x7fn);
      big >>= 7n;
      if (big) b |= 0x80;
      out.push(b);
    } while (big);
    return this.bytes(Uint8Array.from(out));
  }
  tag(field, wire) {
    return this.varint(field * 8 + wire);
  }
  int(field, v) {
    return this.tag(field, WIRE_VARINT).varint(v);
  }
  len(field, payload) {
    return this.tag(field, WIRE_LEN).varint(payload.length).bytes(payload);
  }
  string(field, s) {
    return this.len(field, utf8enc.encode(s));
  }
  finish() {
    const out = new Uint8Array(this.length);
    let pos = 0;
    for (const c of this.chunks) {
      out.set(c, pos);
      pos += c.length;
    }
    return out;
  }
}

/** A TensorProto as numpy_helper.from_array writes it: dims, data_type, name, raw_data. */
export function encodeTensor(name, dataType, dims, data) {
  const w = new Writer();
  for (const d of dims) w.int(1, d);
  w.int(2, dataType);
  w.string(8, name);
  w.len(9, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return w.finish();
}

/**
 * Copy a message, replacing fields: `edit(f)` returns undefined (keep the field's bytes),
 * null (drop it) or a Uint8Array (these bytes, a complete field with its tag, instead).
 */
export function rewrite(buf, start, end, edit) {
  const w = new Writer();
  for (const f of fields(buf, start, end)) {
    const r = edit(f);
    if (r === undefined) w.bytes(buf.subarray(f.tagStart, f.end));
    else if (r !== null) w.bytes(r);
  }
  return w.finish();
}

/** A complete length-delimited field (tag + length + payload). */
export function lenField(field, payload) {
  return new Writer().len(field, payload).finish();
}

export { utf8, utf8enc };
