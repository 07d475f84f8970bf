// .npz archives (a zip of .npy arrays) as numpy writes and reads them, and the adamax-onnx
// checkpoint format on top (adamax_onnx/checkpoint.py): array i stored as "a<i>", the entry
// "__meta__" a UTF-8 JSON document (uint8 array) with the format tag, the model identity, the
// tensor names and the SHA-256 of every array's bytes. Works in node and in browsers.

import { dumpsPy } from "./pyjson.js";

export class CheckpointError extends Error {
  constructor(message) {
    super(message);
    this.name = "CheckpointError";
  }
}

export const FORMAT = "adamax-onnx-checkpoint/1";

const NPY_TYPES = {
  "<f4": { type: "float32", array: Float32Array },
  "<f2": { type: "float16", array: Uint16Array },
  "<f8": { type: "float64", array: Float64Array },
  "<i8": { type: "int64", array: BigInt64Array },
  "<i4": { type: "int32", array: Int32Array },
  "|i1": { type: "int8", array: Int8Array },
  "|u1": { type: "uint8", array: Uint8Array },
  "|b1": { type: "bool", array: Uint8Array },
};
const DESCR = Object.fromEntries(Object.entries(NPY_TYPES).map(([k, v]) => [v.type, k]));

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

// -- CRC-32 (zip) ---------------------------------------------------------------------------------
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function bytesOf(data) {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

// -- .npy ------------------------------------------------------------------------------------------
/** A .npy file (format 1.0) of a C-order array: {type, data, dims}. */
export function encodeNpy({ type, data, dims }) {
  const descr = DESCR[type];
  if (!descr) throw new CheckpointError(`cannot store a ${type} tensor in a checkpoint`);
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const head = enc.encode(header);
  const body = bytesOf(data);
  const out = new Uint8Array(10 + head.length + body.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
  new DataView(out.buffer).setUint16(8, head.length, true);
  out.set(head, 10);
  out.set(body, 10 + head.length);
  return out;
}

/** Parse a .npy file: {type, data (a fresh typed array), dims}. */
export function decodeNpy(bytes, what = "array") {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) {
    throw new CheckpointError(`${what} is not a .npy array`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const hlen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = dec.decode(bytes.subarray(start, start + hlen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) {
    throw new CheckpointError(`${what} has a malformed .npy header`);
  }
  if (fortran === "True") throw new CheckpointError(`${what} is in Fortran order`);
  const spec = NPY_TYPES[descr];
  if (!spec) throw new CheckpointError(`${what} has unsupported dtype ${descr}`);
  const dims = shapeText
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length)
    .map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  const offset = start + hlen;
  const nbytes = count * spec.array.BYTES_PER_ELEMENT;
  if (bytes.length - offset !== nbytes) {
    throw new CheckpointError(`${what} holds ${bytes.length - offset} bytes, expected ${nbytes}`);
  }
  const data = new spec.array(count);
  bytesOf(data).set(bytes.subarray(offset));
  return { type: spec.type, data, dims };
}

// -- zip (stored entries written; stored and deflated read) -------------------------------------------
/** A zip archive of `entries` ([name, bytes]) without compression, as np.savez writes. */
export function writeZip(entries) {
  const parts = [];
  const central = [];
  let offset = 0;
  for (const [name, data] of entries) {
    const nameBytes = enc.encode(name);
    const crc = crc32(data);
    const local = new Uint8Array(30 + nameBytes.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true);
    lv.setUint16(8, 0, true); // stored
    lv.setUint16(12, 0x21, true); // 1980-01-01
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, nameBytes.length, true);
    local.set(nameBytes, 30);
    const cd = new Uint8Array(46 + nameBytes.length);
    const cv = new DataView(cd.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint16(14, 0x21, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, nameBytes.length, true);
    cv.setUint32(42, offset, true);
    cd.set(nameBytes, 46);
    parts.push(local, data);
    central.push(cd);
    offset += local.length + data.length;
  }
  const cdSize = central.reduce((a, c) => a + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, offset, true);
  const all = [...parts, ...central, end];
  const out = new Uint8Array(all.reduce((a, c) => a + c.length, 0));
  let pos = 0;
  for (const c of all) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Entries of a zip archive: Map name -> bytes (CRC checked). */
export async function readZip(bytes) {
  if (!(bytes instanceof Uint8Array)) bytes = new Uint8Array(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 65535); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new CheckpointError("not a zip archive (no end of central directory)");
  const count = view.getUint16(eocd + 10, true);
  let p = view.getUint32(eocd + 16, true);
  const out = new Map();
  for (let k = 0; k < count; k++) {
    if (p + 46 > bytes.length || view.getUint32(p, true) !== 0x02014b50) {
      throw new CheckpointError("corrupted zip central directory");
    }
    const method = view.getUint16(p + 10, true);
    const crc = view.getUint32(p + 16, true);
    let csize = view.getUint32(p + 20, true);
    let usize = view.getUint32(p + 24, true);
    const nlen = view.getUint16(p + 28, true);
    const xlen = view.getUint16(p + 30, true);
    const clen = view.getUint16(p + 32, true);
    let local = view.getUint32(p + 42, true);
    const name = dec.decode(bytes.subarray(p + 46, p + 46 + nlen));
    // zip64 extra field (numpy writes one for large members)
    let xp = p + 46 + nlen;
    const xend = xp + xlen;
    while (xp + 4 <= xend) {
      const id = view.getUint16(xp, true);
      const size = view.getUint16(xp + 2, true);
      if (id === 1) {
        let q = xp + 4;
        if (usize === 0xffffffff) (usize = Number(view.getBigUint64(q, true))), (q += 8);
        if (csize === 0xffffffff) (csize = Number(view.getBigUint64(q, true))), (q += 8);
        if (local === 0xffffffff) local = Number(view.getBigUint64(q, true));
      }
      xp += 4 + size;
    }
    p = xend + clen;
    if (local + 30 > bytes.length || view.getUint32(local, true) !== 0x04034b50) {
      throw new CheckpointError(`corrupted zip entry ${name}`);
    }
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    if (start + csize > bytes.length) throw new CheckpointError(`zip entry ${name} is truncated`);
    let data = bytes.subarray(start, start + csize);
    if (method === 8) data = await inflateRaw(data);
    else if (method !== 0) throw new CheckpointError(`zip entry ${name}: compression ${method}`);
    if (data.length !== usize || crc32(data) !== crc) {
      throw new CheckpointError(`zip entry ${name} fails its CRC`);
    }
    out.set(name, data);
  }
  return out;
}

// -- checkpoints -------------------------------------------------------------------------------------
/**
 * The bytes of a checkpoint holding `arrays` (name -> {type, data, dims}, in order) and `meta`.
 */
export async function writeCheckpoint(arrays, meta) {
  const names = Object.keys(arrays);
  const tensors = [];
  const entries = [];
  for (let i = 0; i < names.length; i++) {
    const a = arrays[names[i]];
    tensors.push({ name: names[i], key: `a${i}`, sha256: await sha256Hex(bytesOf(a.data)) });
    entries.push([`a${i}.npy`, encodeNpy(a)]);
  }
  const doc = { ...meta, format: FORMAT, tensors };
  const json = enc.encode(dumpsPy(doc));
  entries.push(["__meta__.npy", encodeNpy({ type: "uint8", data: json, dims: [json.length] })]);
  return writeZip(entries);
}

/** Read and verify a checkpoint: {arrays: name -> {type, data, dims}, meta}. */
export async function readCheckpoint(bytes) {
  let entries;
  try {
    entries = await readZip(bytes);
  } catch (err) {
    if (err instanceof CheckpointError) {
      throw new CheckpointError(`checkpoint is truncated or corrupted: ${err.message}`);
    }
    throw new CheckpointError(`checkpoint is truncated or corrupted: ${err}`);
  }
  const metaEntry = entries.get("__meta__.npy");
  if (!metaEntry) throw new CheckpointError("not an adamax-onnx checkpoint (no __meta__ entry)");
  let meta;
  try {
    meta = JSON.parse(dec.decode(decodeNpy(metaEntry, "__meta__").data));
  } catch (err) {
    throw new CheckpointError(`checkpoint has malformed metadata: ${err.message}`);
  }
  if (!meta || typeof meta !== "object" || meta.format !== FORMAT) {
    throw new CheckpointError(`checkpoint has format ${JSON.stringify(meta?.format)}, expected ${FORMAT}`);
  }
  const ok =
    Array.isArray(meta.tensors) &&
    meta.tensors.every(
      (t) => t && typeof t.name === "string" && typeof t.key === "string" && typeof t.sha256 === "string",
    );
  if (!ok) throw new CheckpointError("checkpoint has malformed metadata");
  const arrays = {};
  for (const t of meta.tensors) {
    const entry = entries.get(`${t.key}.npy`);
    if (!entry) throw new CheckpointError(`checkpoint is incomplete: tensor ${JSON.stringify(t.name)} is missing`);
    const arr = decodeNpy(entry, `tensor ${JSON.stringify(t.name)}`);
    if ((await sha256Hex(bytesOf(arr.data))) !== t.sha256) {
      throw new CheckpointError(`checkpoint is corrupted: tensor ${JSON.stringify(t.name)} fails its checksum`);
    }
    arrays[t.name] = arr;
  }
  return { arrays, meta };
}
