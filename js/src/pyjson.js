// JSON exactly as Python's json.dumps(obj, sort_keys=True) writes it, so that hashes of JSON
// documents (a model's identity in a checkpoint) agree with the Python package. Numbers read
// from Python-written JSON keep their literal text (1.0 stays "1.0", 1e-08 stays "1e-08").

export class RawNumber {
  constructor(text) {
    this.text = text;
  }
}

/** Parse JSON keeping every number literal as a RawNumber. */
export function parseRaw(text) {
  let pos = 0;
  const ws = () => {
    while (pos < text.length && " \t\n\r".includes(text[pos])) pos++;
  };
  const value = () => {
    ws();
    const c = text[pos];
    if (c === "{") {
      pos++;
      const obj = {};
      ws();
      if (text[pos] === "}") {
        pos++;
        return obj;
      }
      for (;;) {
        ws();
        const key = string();
        ws();
        if (text[pos++] !== ":") throw new SyntaxError(`expected ':' at ${pos - 1}`);
        obj[key] = value();
        ws();
        const sep = text[pos++];
        if (sep === "}") return obj;
        if (sep !== ",") throw new SyntaxError(`expected ',' or '}' at ${pos - 1}`);
      }
    }
    if (c === "[") {
      pos++;
      const arr = [];
      ws();
      if (text[pos] === "]") {
        pos++;
        return arr;
      }
      for (;;) {
        arr.push(value());
        ws();
        const sep = text[pos++];
        if (sep === "]") return arr;
        if (sep !== ",") throw new SyntaxError(`expected ',' or ']' at ${pos - 1}`);
      }
    }
    if (c === '"') return string();
    for (const [lit, v] of [
      ["true", true],
      ["false", false],
      ["null", null],
      ["NaN", new RawNumber("NaN")],
      ["Infinity", new RawNumber("Infinity")],
      ["-Infinity", new RawNumber("-Infinity")],
    ]) {
      if (text.startsWith(lit, pos)) {
        pos += lit.length;
        return v;
      }
    }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(pos, pos + 64));
    if (!m) throw new SyntaxError(`unexpected character at ${pos}`);
    pos += m[0].length;
    return new RawNumber(m[0]);
  };
  const string = () => {
    if (text[pos] !== '"') throw new SyntaxError(`expected a string at ${pos}`);
    let end = pos + 1;
    while (text[end] !== '"') {
      if (text[end] === "\\") end++;
      end++;
      if (end >= text.length) throw new SyntaxError("unterminated string");
    }
    const s = JSON.parse(text.slice(pos, end + 1));
    pos = end + 1;
    return s;
  };
  const out = value();
  ws();
  if (pos !== text.length) throw new SyntaxError(`trailing data at ${pos}`);
  return out;
}

function pyString(s) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i];
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

/** Python's repr of a float (the form json.dumps writes). */
export function pyFloat(x) {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const exp = Math.floor(Math.log10(Math.abs(x)));
  let s = String(x); // shortest round-trip digits, like Python's repr
  const [mant, e] = s.includes("e") ? s.split("e") : [s, null];
  let digits = mant.replace("-", "").replace(".", "");
  let e10 = e === null ? null : Number(e);
  // decimal exponent of the first significant digit
  const pointExp = e10 !== null ? e10 : exp;
  if (pointExp < -4 || pointExp >= 16) {
    digits = digits.replace(/^0+/, "");
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1).replace(/0+$/, "")}` : digits;
    const mm = m.endsWith(".") ? m.slice(0, -1) : m;
    const es = Math.abs(pointExp).toString().padStart(2, "0");
    s = `${x < 0 ? "-" : ""}${mm}e${pointExp < 0 ? "-" : "+"}${es}`;
    return s;
  }
  if (e !== null) s = x.toFixed(Math.max(0, -pointExp + digits.length)); // JS used exponent form
  if (!s.includes(".")) s += ".0";
  return s;
}

/** json.dumps(value, sort_keys=True) with Python's default separators and ensure_ascii. */
export function dumpsPy(value) {
  if (value === null || value === undefined) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (value instanceof RawNumber) return value.text;
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : pyFloat(value);
  if (typeof value === "string") return pyString(value);
  if (Array.isArray(value)) return `[${value.map(dumpsPy).join(", ")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${pyString(k)}: ${dumpsPy(value[k])}`).join(", ")}}`;
}
