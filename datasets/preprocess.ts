/**
 * Evaluation preprocessing equal to timm's eval transform for square inputs
 * (`Resize(floor(size / crop_pct))` on the shorter side, `CenterCrop(size)`,
 * `ToTensor()`, `Normalize(mean, std)`) on images loaded as
 * `PIL.Image.open(path).convert("RGB")`.
 *
 * - Decoding: sharp (libvips, mozjpeg) to raw 8-bit pixels, embedded ICC
 *   profiles and EXIF orientation ignored (as PIL does). Grayscale is
 *   replicated to 3 channels, an alpha channel is dropped, CMYK is read raw and
 *   converted with PIL's formula `R = round((255 - C) * (255 - K) / 255)`. The
 *   container is detected from the bytes, so a PNG named `.JPEG` decodes.
 *   Truncated or unreadable files are failures, reported by path.
 * - Resampling: our own implementation of PIL's antialiased separable
 *   convolution (`Image.resize` with BICUBIC, a = -0.5, or BILINEAR): the
 *   filter support is stretched by the scale factor when downscaling, weights
 *   are normalized and rounded to 22-bit fixed point, a horizontal pass with
 *   8-bit clipping is followed by a vertical pass. Only the pixels inside the
 *   center crop are computed. The two passes run as 128-bit SIMD WebAssembly
 *   (`resample.wat`, embedded in `resample_wasm.ts`); a plain JS version of the
 *   same integer arithmetic is kept as the reference (`backend: "js"`). sharp's
 *   own `resize` was measured against PIL and not used: on the fixture set its
 *   "cubic" kernel is 0.4 uint8 levels off on average (max 30) when shrinking
 *   and 5 levels (max 161) when enlarging, where it places pixel centres
 *   differently (`tools/bench_preprocess.ts --compare-sharp`).
 * - Center crop: torchvision's `CenterCrop` offsets `round((H - size) / 2)` with
 *   Python's round-half-to-even, zero padding when the image is smaller than
 *   the crop.
 * - Tensor: float32 `(x / 255 - mean[c]) / std[c]`, NCHW, computed in float32
 *   steps as torchvision does.
 *
 * @module
 */
import { roundHalfEven } from "../core/quant/uniform.ts";
import sharp from "sharp";
import { VitqError } from "../core/errors.ts";
import { RESAMPLE_WASM_BASE64 } from "./resample_wasm.ts";
import { decodeBase64 } from "./resample_wasm_util.ts";

/** Resampling filters supported (PIL's BICUBIC and BILINEAR). */
export type Interpolation = "bicubic" | "bilinear";

/** The fields of a model card that drive preprocessing. */
export interface PreprocessCard {
  /** Model name, for error messages. */
  name?: string;
  /** Model input size; square, 3 channels. */
  input: { height: number; width: number; channels: number };
  /** Per-channel mean and std (RGB) applied to x / 255. */
  normalization: { mean: number[]; std: number[] };
  /** Fraction of the resized shorter side kept by the center crop (timm `crop_pct`). */
  crop_pct?: number;
  /** Resize filter (timm `interpolation`). */
  interpolation?: string;
}

/**
 * The geometric part of preprocessing: everything that determines the uint8
 * crop (the cache key); normalization is applied afterwards.
 */
export interface Geometry {
  /** Crop height = width (square inputs only). */
  size: number;
  /** timm crop_pct. */
  crop_pct: number;
  /** Resize filter. */
  interpolation: Interpolation;
}

/** A validated preprocessing configuration. */
export interface PreprocessConfig {
  /** What determines the uint8 crop. */
  geometry: Geometry;
  /** Per-channel mean (RGB order). */
  mean: [number, number, number];
  /** Per-channel std (RGB order). */
  std: [number, number, number];
}

/** A decoded image: 8-bit RGB, row-major, interleaved (HWC). */
export interface RgbImage {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** width x height x 3 bytes, row-major RGB. */
  data: Uint8Array;
}

/** Why one image could not be preprocessed. */
export interface PreprocessFailure {
  /** Position of the image in the request. */
  index: number;
  /** The file. */
  path: string;
  /** What went wrong, one line. */
  reason: string;
}

/**
 * Validate the preprocessing fields of a model card. `crop_pct` and
 * `interpolation` are required (no silent defaults: they change accuracy).
 */
export function preprocessConfig(card: PreprocessCard): PreprocessConfig {
  const who = `model card${card.name ? ` ${card.name}` : ""}`;
  const { height, width, channels } = card.input;
  if (channels !== 3) {
    throw new VitqError(`${who}: /input/channels is ${channels}, ImageNet preprocessing needs 3`);
  }
  if (!Number.isInteger(height) || height <= 0 || height !== width) {
    throw new VitqError(
      `${who}: /input is ${height}x${width}, only square inputs are supported by the timm eval transform here`,
    );
  }
  const cp = card.crop_pct;
  if (typeof cp !== "number" || !(cp > 0) || !Number.isFinite(cp)) {
    throw new VitqError(
      `${who}: /crop_pct missing or not a positive number (timm uses e.g. 0.875)`,
    );
  }
  const interp = card.interpolation;
  if (interp !== "bicubic" && interp !== "bilinear") {
    throw new VitqError(
      `${who}: /interpolation is ${JSON.stringify(interp)}, expected "bicubic" or "bilinear"`,
    );
  }
  const { mean, std } = card.normalization;
  if (mean?.length !== 3 || std?.length !== 3 || std.some((s) => !(s > 0))) {
    throw new VitqError(`${who}: /normalization needs 3 means and 3 positive stds`);
  }
  return {
    geometry: { size: height, crop_pct: cp, interpolation: interp },
    mean: [mean[0], mean[1], mean[2]],
    std: [std[0], std[1], std[2]],
  };
}

/** Shorter-side target of the resize: `floor(size / crop_pct)` as timm computes it. */
export function scaleSize(g: Geometry): number {
  return Math.floor(g.size / g.crop_pct);
}

/**
 * Output size (width, height) of torchvision's `Resize(s)` for an image of
 * `w` x `h`: the shorter side becomes `s`, the longer `int(s * long / short)`.
 */
export function resizedSize(w: number, h: number, s: number): [number, number] {
  if (w <= h) return [s, Math.trunc((s * h) / w)];
  return [Math.trunc((s * w) / h), s];
}

/**
 * torchvision's `CenterCrop(size)` placement on a `w` x `h` image: padding
 * (left, top) added when the image is smaller than the crop, and the crop
 * offset (left, top) in the padded image.
 */
export function centerCropBox(
  w: number,
  h: number,
  size: number,
): { padLeft: number; padTop: number; left: number; top: number } {
  let padLeft = 0, padTop = 0, pw = w, ph = h;
  if (size > w || size > h) {
    if (size > w) {
      padLeft = Math.floor((size - w) / 2);
      pw = w + padLeft + Math.floor((size - w + 1) / 2);
    }
    if (size > h) {
      padTop = Math.floor((size - h) / 2);
      ph = h + padTop + Math.floor((size - h + 1) / 2);
    }
  }
  return {
    padLeft,
    padTop,
    left: roundHalfEven((pw - size) / 2),
    top: roundHalfEven((ph - size) / 2),
  };
}

// ---------------------------------------------------------------- resampling

const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

function triangle(x: number): number {
  if (x < 0) x = -x;
  return x < 1 ? 1 - x : 0;
}

/** Fixed-point taps of one 1-D resampling, for output positions [first, first + n). */
interface Taps {
  /** First input index of each output. */
  start: Int32Array;
  /** Number of taps of each output. */
  count: Int32Array;
  /** Weights, `stride` per output. */
  weights: Int32Array;
  stride: number;
}

function computeTaps(
  inSize: number,
  outSize: number,
  interp: Interpolation,
  first: number,
  n: number,
): Taps {
  const filter = interp === "bicubic" ? bicubic : triangle;
  const support0 = interp === "bicubic" ? 2 : 1;
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = support0 * filterscale;
  const ss = 1 / filterscale;
  const stride = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(n), count = new Int32Array(n);
  const weights = new Int32Array(n * stride);
  const w = new Float64Array(stride);
  for (let i = 0; i < n; i++) {
    const center = (first + i + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const v = filter((x + xmin - center + 0.5) * ss);
      w[x] = v;
      total += v;
    }
    for (let x = 0; x < xmax; x++) {
      const v = total !== 0 ? w[x] / total : w[x];
      weights[i * stride + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    start[i] = xmin;
    count[i] = xmax;
  }
  return { start, count, weights, stride };
}

function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Which implementation runs the resampling passes (identical results). */
export type ResampleBackend = "wasm" | "js";

/** Taps and the input rows a window needs. */
interface Plan {
  ht?: Taps;
  vt?: Taps;
  rowFirst: number;
  rows: number;
}

function plan(
  img: RgbImage,
  outW: number,
  outH: number,
  interp: Interpolation,
  x0: number,
  y0: number,
  cw: number,
  ch: number,
): Plan {
  let vt: Taps | undefined, rowFirst = y0, rowEnd = y0 + ch;
  if (outH !== img.height) {
    // vertical taps decide which input rows the horizontal pass must produce
    vt = computeTaps(img.height, outH, interp, y0, ch);
    rowFirst = vt.start[0];
    rowEnd = 0;
    for (let i = 0; i < ch; i++) {
      rowEnd = Math.max(rowEnd, vt.start[i] + vt.count[i]);
      rowFirst = Math.min(rowFirst, vt.start[i]);
    }
  }
  const ht = outW !== img.width ? computeTaps(img.width, outW, interp, x0, cw) : undefined;
  return { ht, vt, rowFirst, rows: rowEnd - rowFirst };
}

/**
 * Resize `img` to `outW` x `outH` with PIL's algorithm and return only the
 * window [x0, x0 + cw) x [y0, y0 + ch) of the result (HWC RGB uint8).
 * `backend` picks the SIMD WebAssembly passes (default) or the plain JS
 * reference; both compute the same integers.
 */
export function resizeWindow(
  img: RgbImage,
  outW: number,
  outH: number,
  interp: Interpolation,
  x0: number,
  y0: number,
  cw: number,
  ch: number,
  backend: ResampleBackend = "wasm",
): Uint8Array {
  const pl = plan(img, outW, outH, interp, x0, y0, cw, ch);
  return backend === "wasm" ? resampleWasm(img, pl, x0, cw, ch) : resampleJs(img, pl, x0, cw, ch);
}

function resampleJs(img: RgbImage, pl: Plan, x0: number, cw: number, ch: number): Uint8Array {
  const { width: inW, data } = img;
  const { ht, vt, rowFirst, rows } = pl;
  // horizontal pass: rows [rowFirst, rowFirst + rows) of the input, columns of the window
  const tmp = new Uint8Array(rows * cw * 3);
  if (ht) {
    const { start, count, weights, stride } = ht;
    for (let r = 0; r < rows; r++) {
      const rowOff = (rowFirst + r) * inW * 3;
      const outOff = r * cw * 3;
      for (let i = 0; i < cw; i++) {
        let a0 = HALF, a1 = HALF, a2 = HALF;
        let p = rowOff + start[i] * 3;
        const k0 = i * stride, kn = k0 + count[i];
        for (let k = k0; k < kn; k++, p += 3) {
          const wk = weights[k];
          a0 = (a0 + Math.imul(data[p], wk)) | 0;
          a1 = (a1 + Math.imul(data[p + 1], wk)) | 0;
          a2 = (a2 + Math.imul(data[p + 2], wk)) | 0;
        }
        const o = outOff + i * 3;
        tmp[o] = clip8(a0);
        tmp[o + 1] = clip8(a1);
        tmp[o + 2] = clip8(a2);
      }
    }
  } else {
    for (let r = 0; r < rows; r++) {
      const src = ((rowFirst + r) * inW + x0) * 3;
      tmp.set(data.subarray(src, src + cw * 3), r * cw * 3);
    }
  }
  if (!vt) return tmp;
  // vertical pass
  const out = new Uint8Array(ch * cw * 3);
  const { start, count, weights, stride } = vt;
  const rowLen = cw * 3;
  const acc = new Int32Array(rowLen);
  for (let j = 0; j < ch; j++) {
    const k0 = j * stride, kn = k0 + count[j];
    acc.fill(HALF);
    for (let k = k0, base = (start[j] - rowFirst) * rowLen; k < kn; k++, base += rowLen) {
      const wk = weights[k];
      for (let c = 0; c < rowLen; c++) acc[c] = (acc[c] + Math.imul(tmp[base + c], wk)) | 0;
    }
    const outOff = j * rowLen;
    for (let c = 0; c < rowLen; c++) out[outOff + c] = clip8(acc[c]);
  }
  return out;
}

interface WasmPasses {
  memory: WebAssembly.Memory;
  hpass: (...a: number[]) => void;
  vpass: (...a: number[]) => void;
}

let wasmPasses: WasmPasses | undefined;

function passes(): WasmPasses {
  if (!wasmPasses) {
    const mod = new WebAssembly.Module(decodeBase64(RESAMPLE_WASM_BASE64) as BufferSource);
    const inst = new WebAssembly.Instance(mod, {});
    const e = inst.exports as Record<string, unknown>;
    wasmPasses = {
      memory: e.memory as WebAssembly.Memory,
      hpass: e.hpass as (...a: number[]) => void,
      vpass: e.vpass as (...a: number[]) => void,
    };
  }
  return wasmPasses;
}

const align16 = (n: number) => (n + 15) & ~15;

function resampleWasm(img: RgbImage, pl: Plan, x0: number, cw: number, ch: number): Uint8Array {
  const w = passes();
  const { width: inW, data } = img;
  const { ht, vt, rowFirst, rows } = pl;
  const rowLen = cw * 3;
  // memory layout: tap tables, source rows, intermediate, output (16 bytes of slack each)
  let off = 0;
  const take = (bytes: number) => {
    const at = off;
    off = align16(off + bytes + 16);
    return at;
  };
  const tabBytes = (t: Taps | undefined) => (t ? (t.start.length * (2 + t.stride)) * 4 : 0);
  const hTab = take(tabBytes(ht)), vTab = take(tabBytes(vt));
  const src = ht ? take(rows * inW * 3) : 0;
  const tmp = take(rows * rowLen);
  const dst = vt ? take(ch * rowLen) : 0;
  const need = off - w.memory.buffer.byteLength;
  if (need > 0) w.memory.grow(Math.ceil(need / 65536));
  const buf = w.memory.buffer;
  const u8 = new Uint8Array(buf);
  const putTaps = (t: Taps, at: number, shift: number) => {
    const n = t.start.length;
    const i32 = new Int32Array(buf, at, n * (2 + t.stride));
    for (let i = 0; i < n; i++) i32[i] = t.start[i] - shift;
    i32.set(t.count, n);
    i32.set(t.weights, 2 * n);
  };
  if (ht) {
    putTaps(ht, hTab, 0);
    u8.set(data.subarray(rowFirst * inW * 3, (rowFirst + rows) * inW * 3), src);
    const n = ht.start.length;
    w.hpass(src, inW * 3, rows, cw, hTab, hTab + 4 * n, hTab + 8 * n, ht.stride, tmp);
  } else {
    for (let r = 0; r < rows; r++) {
      const s = ((rowFirst + r) * inW + x0) * 3;
      u8.set(data.subarray(s, s + rowLen), tmp + r * rowLen);
    }
  }
  if (!vt) return u8.slice(tmp, tmp + rows * rowLen);
  putTaps(vt, vTab, rowFirst);
  const n = vt.start.length;
  w.vpass(tmp, rowLen, ch, vTab, vTab + 4 * n, vTab + 8 * n, vt.stride, dst);
  return u8.slice(dst, dst + ch * rowLen);
}

/**
 * Resize (shorter side to `floor(size / crop_pct)`) and center-crop a decoded
 * image: the uint8 crop, `size` x `size` x 3 (HWC RGB).
 */
export function resizeCrop(
  img: RgbImage,
  g: Geometry,
  backend: ResampleBackend = "wasm",
): Uint8Array {
  const s = scaleSize(g);
  const [rw, rh] = resizedSize(img.width, img.height, s);
  const size = g.size;
  const box = centerCropBox(rw, rh, size);
  // crop window in resized coordinates, clipped to the resized image
  const x0 = box.left - box.padLeft, y0 = box.top - box.padTop;
  const vx0 = Math.max(0, x0), vy0 = Math.max(0, y0);
  const vx1 = Math.min(rw, x0 + size), vy1 = Math.min(rh, y0 + size);
  const resized = rw === img.width && rh === img.height
    ? cropRgb(img, vx0, vy0, vx1 - vx0, vy1 - vy0)
    : resizeWindow(img, rw, rh, g.interpolation, vx0, vy0, vx1 - vx0, vy1 - vy0, backend);
  if (vx0 === x0 && vy0 === y0 && vx1 - vx0 === size && vy1 - vy0 === size) return resized;
  const out = new Uint8Array(size * size * 3); // zero padding
  const cw = vx1 - vx0;
  for (let y = vy0; y < vy1; y++) {
    out.set(
      resized.subarray((y - vy0) * cw * 3, (y - vy0 + 1) * cw * 3),
      ((y - y0) * size + (vx0 - x0)) * 3,
    );
  }
  return out;
}

function cropRgb(img: RgbImage, x0: number, y0: number, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const src = ((y0 + y) * img.width + x0) * 3;
    out.set(img.data.subarray(src, src + w * 3), y * w * 3);
  }
  return out;
}

/** Per-channel lookup tables uint8 -> normalized float32 value. */
export function normalizationTable(cfg: PreprocessConfig): Float32Array {
  const lut = new Float32Array(3 * 256);
  for (let c = 0; c < 3; c++) {
    const m = Math.fround(cfg.mean[c]), s = Math.fround(cfg.std[c]);
    for (let v = 0; v < 256; v++) {
      // float32 at every step, as torch: x / 255, then x - mean, then / std
      lut[c * 256 + v] = Math.fround(Math.fround(Math.fround(v / 255) - m) / s);
    }
  }
  return lut;
}

/**
 * Write the normalized CHW float32 tensor of an HWC uint8 crop into `out` at
 * `offset` (in elements).
 */
export function normalizeInto(
  crop: Uint8Array,
  lut: Float32Array,
  out: Float32Array,
  offset: number,
): void {
  const plane = crop.length / 3;
  for (let i = 0, p = 0; i < plane; i++, p += 3) {
    out[offset + i] = lut[crop[p]];
    out[offset + plane + i] = lut[256 + crop[p + 1]];
    out[offset + 2 * plane + i] = lut[512 + crop[p + 2]];
  }
}

// ------------------------------------------------------------------ decoding

/** A decode failure (corrupt, truncated or unsupported file). */
export class DecodeError extends Error {
  /** The file. */
  readonly path: string;
  /** What went wrong, one line. */
  readonly reason: string;
  /**
   * A failure of `path` because of `reason`.
   * @param path the file
   * @param reason what went wrong, one line
   */
  constructor(path: string, reason: string) {
    super(`${path}: cannot decode image (${reason})`);
    this.name = "DecodeError";
    this.path = path;
    this.reason = reason;
  }
}

const SHARP_INPUT = { failOn: "truncated", ignoreIcc: true, sequentialRead: true } as const;

/**
 * Number of colour components of a baseline/progressive JPEG from its SOF
 * header, or undefined when the bytes are not a JPEG or the header is not
 * found (the caller then asks the decoder).
 */
export function jpegComponents(b: Uint8Array): number | undefined {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return undefined;
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) return undefined;
    const m = b[p + 1];
    if (m === 0xff) {
      p++; // fill byte
      continue;
    }
    if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      p += 2; // markers without a length
      continue;
    }
    const len = (b[p + 2] << 8) | b[p + 3];
    if (len < 2) return undefined;
    const isSof = m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
    if (isSof) return p + 9 < b.length ? b[p + 9] : undefined;
    if (m === 0xda || m === 0xd9) return undefined; // scan data before a frame header
    p += 2 + len;
  }
  return undefined;
}

/**
 * Decode image bytes to 8-bit RGB as `PIL.Image.open(...).convert("RGB")`
 * does. Throws {@link DecodeError} for truncated or unreadable data.
 */
export async function decodeRgb(bytes: Uint8Array, path: string): Promise<RgbImage> {
  try {
    const comps = jpegComponents(bytes);
    const cmyk = comps === 1 || comps === 3
      ? false
      : (await sharp(bytes, SHARP_INPUT).metadata()).space === "cmyk";
    let pipe = sharp(bytes, SHARP_INPUT);
    if (cmyk) pipe = pipe.pipelineColourspace("cmyk").toColourspace("cmyk");
    const { data, info } = await pipe.raw({ depth: "uchar" }).toBuffer({
      resolveWithObject: true,
    });
    const n = info.width * info.height;
    const ch = info.channels;
    const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (src.length < n * ch) throw new Error(`short pixel buffer (${src.length} bytes)`);
    let rgb: Uint8Array;
    if (cmyk) {
      if (ch !== 4) throw new Error(`CMYK image with ${ch} channels`);
      rgb = new Uint8Array(n * 3);
      for (let i = 0, p = 0, q = 0; i < n; i++, p += 4, q += 3) {
        const k = 255 - src[p + 3];
        rgb[q] = Math.round(((255 - src[p]) * k) / 255);
        rgb[q + 1] = Math.round(((255 - src[p + 1]) * k) / 255);
        rgb[q + 2] = Math.round(((255 - src[p + 2]) * k) / 255);
      }
    } else if (ch === 3) {
      rgb = src.length === n * 3 ? src : src.slice(0, n * 3);
    } else if (ch === 4) {
      rgb = new Uint8Array(n * 3);
      for (let i = 0, p = 0, q = 0; i < n; i++, p += 4, q += 3) {
        rgb[q] = src[p];
        rgb[q + 1] = src[p + 1];
        rgb[q + 2] = src[p + 2];
      }
    } else if (ch === 1 || ch === 2) {
      rgb = new Uint8Array(n * 3);
      for (let i = 0, p = 0, q = 0; i < n; i++, p += ch, q += 3) {
        rgb[q] = rgb[q + 1] = rgb[q + 2] = src[p];
      }
    } else {
      throw new Error(`unsupported channel count ${ch}`);
    }
    return { width: info.width, height: info.height, data: rgb };
  } catch (err) {
    if (err instanceof DecodeError) throw err;
    const msg = String((err as Error)?.message ?? err).split("\n")[0].trim();
    throw new DecodeError(path, msg || "unknown error");
  }
}

/** Decode, resize and center-crop image bytes: the uint8 HWC crop. */
export async function cropFromBytes(
  bytes: Uint8Array,
  path: string,
  g: Geometry,
): Promise<Uint8Array> {
  return resizeCrop(await decodeRgb(bytes, path), g);
}

/** Versions of the decoder, part of the cache key (a decoder change may move pixels). */
export function decoderVersion(): string {
  const v = sharp.versions as Record<string, string | undefined>;
  return `sharp ${v.sharp ?? "?"} libvips ${v.vips ?? "?"} mozjpeg ${v.mozjpeg ?? "?"}`;
}
