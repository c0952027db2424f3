// MessagePack, the subset SGLang's realtime websocket speaks: nil, booleans, integers, floats,
// strings, binary (Uint8Array), arrays and maps (plain objects). No dependencies, so the page
// works opened from a file.
"use strict";

const msgpack = (() => {
  const utf8 = new TextEncoder();
  const fromUtf8 = new TextDecoder();

  function encode(value) {
    const parts = [];
    const byte = (...bytes) => parts.push(Uint8Array.from(bytes));
    const sized = (value, codes) => {  // a length or integer after one of three type codes
      const view = new DataView(new ArrayBuffer(5));
      if (value < 256 && codes[0] !== null) { view.setUint8(0, codes[0]); view.setUint8(1, value); parts.push(new Uint8Array(view.buffer, 0, 2)); }
      else if (value < 65536) { view.setUint8(0, codes[1]); view.setUint16(1, value); parts.push(new Uint8Array(view.buffer, 0, 3)); }
      else { view.setUint8(0, codes[2]); view.setUint32(1, value); parts.push(new Uint8Array(view.buffer, 0, 5)); }
    };
    const write = (v) => {
      if (v === null || v === undefined) byte(0xc0);
      else if (v === false) byte(0xc2);
      else if (v === true) byte(0xc3);
      else if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) < 2 ** 31) {
        if (v >= 0 && v < 128) byte(v);
        else if (v < 0 && v >= -32) byte(v & 0xff);
        else { const view = new DataView(new ArrayBuffer(5)); view.setUint8(0, 0xd2); view.setInt32(1, v); parts.push(new Uint8Array(view.buffer)); }
      } else if (typeof v === "number") {
        const view = new DataView(new ArrayBuffer(9)); view.setUint8(0, 0xcb); view.setFloat64(1, v); parts.push(new Uint8Array(view.buffer));
      } else if (typeof v === "string") {
        const bytes = utf8.encode(v);
        if (bytes.length < 32) byte(0xa0 | bytes.length); else sized(bytes.length, [0xd9, 0xda, 0xdb]);
        parts.push(bytes);
      } else if (v instanceof Uint8Array) {
        sized(v.length, [0xc4, 0xc5, 0xc6]); parts.push(v);
      } else if (Array.isArray(v)) {
        if (v.length < 16) byte(0x90 | v.length); else sized(v.length, [null, 0xdc, 0xdd]);
        v.forEach(write);
      } else if (typeof v === "object") {
        const keys = Object.keys(v).filter((k) => v[k] !== undefined);
        if (keys.length < 16) byte(0x80 | keys.length); else sized(keys.length, [null, 0xde, 0xdf]);
        for (const k of keys) { write(k); write(v[k]); }
      } else throw new TypeError(`msgpack: cannot encode ${typeof v}`);
    };
    write(value);
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  function decode(buffer) {
    const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    const take = (n) => { const out = bytes.subarray(at, at + n); at += n; return out; };
    const str = (n) => fromUtf8.decode(take(n));
    const arr = (n) => Array.from({ length: n }, read);
    const map = (n) => { const out = {}; for (let i = 0; i < n; i++) { const k = read(); out[k] = read(); } return out; };
    const int = (get, size) => { const v = view[get](at); at += size; return v; };
    function read() {
      const code = bytes[at++];
      if (code < 0x80) return code;
      if (code < 0x90) return map(code & 0x0f);
      if (code < 0xa0) return arr(code & 0x0f);
      if (code < 0xc0) return str(code & 0x1f);
      if (code >= 0xe0) return code - 256;
      switch (code) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return take(int("getUint8", 1)).slice();
        case 0xc5: return take(int("getUint16", 2)).slice();
        case 0xc6: return take(int("getUint32", 4)).slice();
        case 0xca: return int("getFloat32", 4);
        case 0xcb: return int("getFloat64", 8);
        case 0xcc: return int("getUint8", 1);
        case 0xcd: return int("getUint16", 2);
        case 0xce: return int("getUint32", 4);
        case 0xcf: return Number(int("getBigUint64", 8));
        case 0xd0: return int("getInt8", 1);
        case 0xd1: return int("getInt16", 2);
        case 0xd2: return int("getInt32", 4);
        case 0xd3: return Number(int("getBigInt64", 8));
        case 0xd9: return str(int("getUint8", 1));
        case 0xda: return str(int("getUint16", 2));
        case 0xdb: return str(int("getUint32", 4));
        case 0xdc: return arr(int("getUint16", 2));
        case 0xdd: return arr(int("getUint32", 4));
        case 0xde: return map(int("getUint16", 2));
        case 0xdf: return map(int("getUint32", 4));
        default: throw new Error(`msgpack: unsupported type 0x${code.toString(16)}`);
      }
    }
    return read();
  }

  return { encode, decode };
})();
