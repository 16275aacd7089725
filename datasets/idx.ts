/**
 * IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.
 *
 * @module
 */
import { gunzipSync, gzipSync } from "node:zlib";
import { VitqError } from "../core/errors.ts";

/** A decoded unsigned-byte IDX array. */
export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

/** Decode IDX bytes (gzip detected by magic number). `source` names the file in errors. */
export function decodeIdx(bytes: Uint8Array, source: string): IdxArray {
  let b = bytes;
  if (b.length > 2 && b[0] === 0x1f && b[1] === 0x8b) {
    try {
      b = new Uint8Array(gunzipSync(b));
    } catch (e) {
      throw new VitqError(`${source}: corrupt gzip stream (${(e as Error).message})`);
    }
  }
  if (b.length < 4 || b[0] !== 0 || b[1] !== 0) {
    throw new VitqError(`${source}: not an IDX file (bad magic number)`);
  }
  if (b[2] !== 0x08) {
    throw new VitqError(`${source}: IDX element type 0x${b[2].toString(16)} is not unsigned byte`);
  }
  const ndim = b[3];
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const dims: number[] = [];
  for (let i = 0; i < ndim; i++) dims.push(view.getUint32(4 + 4 * i, false));
  const n = dims.reduce((a, c) => a * c, 1);
  const off = 4 + 4 * ndim;
  if (b.length - off !== n) {
    throw new VitqError(
      `${source}: IDX payload has ${b.length - off} bytes, dims [${dims}] need ${n}`,
    );
  }
  return { dims, data: b.subarray(off) };
}

/** Read an IDX file from disk. */
export async function readIdx(path: string): Promise<IdxArray> {
  let bytes: Uint8Array;
  try {
    const st = await Deno.stat(path);
    if (!st.isFile) throw new VitqError(`${path}: cannot read IDX file (not a regular file)`);
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof VitqError) throw e;
    throw new VitqError(`${path}: cannot read IDX file (${(e as Error).name})`);
  }
  return decodeIdx(bytes, path);
}

/** Encode an unsigned-byte IDX array, gzip-compressed when `gzip` is set. */
export function encodeIdx(arr: IdxArray, gzip = true): Uint8Array {
  const head = new Uint8Array(4 + 4 * arr.dims.length);
  head[2] = 0x08;
  head[3] = arr.dims.length;
  const view = new DataView(head.buffer);
  arr.dims.forEach((d, i) => view.setUint32(4 + 4 * i, d, false));
  const out = new Uint8Array(head.length + arr.data.length);
  out.set(head);
  out.set(arr.data, head.length);
  return gzip ? new Uint8Array(gzipSync(out, { level: 9 })) : out;
}
