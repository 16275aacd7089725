/**
 * Seeded fuzzing of everything a user hands the bench: >= 300 mutations of the
 * shipped manifests and >= 40 bad models, model cards and data files. Every case
 * must end refused (a one-line VitqError naming the file or field: exit 2 in the
 * CLI) or accepted (and then run with correct numbers), never with another error,
 * a stack trace or a hang; a refused run leaves the database and the tables as
 * they were. Manifest mutations are checked in-process through `prepareBench`,
 * the function `deno task bench` calls before it opens the database (without the
 * FP32 pre-flight pass, which the shipped models always pass); a sample of cases
 * also goes through the real CLI to prove the exit code and one-line contract.
 */
import assert from "node:assert/strict";
import sharp from "sharp";
import { prepareBench } from "../bench/prepare.ts";
import { evaluate, nonFiniteMessage } from "../bench/evaluate.ts";
import { Store } from "../bench/store.ts";
import { mdText } from "../bench/tables.ts";
import { VitqError } from "../core/errors.ts";
import { Graph, Tensor } from "../core/onnx/graph.ts";
import { loadFashionMnist } from "../datasets/fashion_mnist.ts";
import { encodeIdx } from "../datasets/idx.ts";
import { makeSource } from "../datasets/source.ts";
import { FIXTURE_CARD, FIXTURES, ROOT, runtime, tmpDir } from "./helpers.ts";

const SEED = 15;
/** HTML reports of the CLI runs go here, not into results/. */
const REPORT_DIR = await Deno.makeTempDir({ prefix: "vitq-fuzz-report-" });
const MUTATIONS = 320;
const HANG_MS = 60_000;
const PROTO = [
  "constructor",
  "toString",
  "__proto__",
  "hasOwnProperty",
  "valueOf",
  "isPrototypeOf",
];

/** mulberry32: a small seeded PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Path = (string | number)[];

// deno-lint-ignore no-explicit-any
function isObj(x: unknown): x is Record<string, any> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function nodes(x: Json, path: Path = [], out: Path[] = []): Path[] {
  if (path.length) out.push(path);
  if (Array.isArray(x)) x.forEach((v, i) => nodes(v, [...path, i], out));
  else if (x && typeof x === "object") {
    for (const k of Object.keys(x)) nodes(x[k], [...path, k], out);
  }
  return out;
}

function get(x: Json, p: Path): Json {
  // deno-lint-ignore no-explicit-any
  return p.reduce((o: any, k) => o?.[k], x);
}

function set(x: Json, p: Path, v: Json | undefined): void {
  // deno-lint-ignore no-explicit-any
  const parent: any = get(x, p.slice(0, -1));
  const k = p[p.length - 1];
  if (parent === null || typeof parent !== "object") return;
  if (v === undefined) {
    if (Array.isArray(parent)) parent.splice(k as number, 1);
    else delete parent[k];
  } else {
    Object.defineProperty(parent, k, { value: v, enumerable: true, writable: true });
  }
}

/** Outcome classes that must stay empty (the good ones: refused, accepted, ran). */
const BAD = ["crash / stack trace", "hang", "unnamed or multi-line error", "files touched"];

class Tally {
  counts = new Map<string, number>();
  examples = new Map<string, string[]>();
  add(group: string, cls: string, what: string) {
    const k = `${group}: ${cls}`;
    this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
    if (BAD.includes(cls)) (this.examples.get(k) ?? this.examples.set(k, []).get(k)!).push(what);
  }
  total(group: string): number {
    let n = 0;
    for (const [k, v] of this.counts) if (k.startsWith(`${group}:`)) n += v;
    return n;
  }
  bad(): string[] {
    return [...this.examples].map(([k, v]) => `${k}: ${v.slice(0, 3).join(" | ")}`);
  }
  print() {
    console.log("fuzz outcome counts per class:");
    for (const [k, v] of [...this.counts].sort()) console.log(`  ${k}: ${v}`);
  }
}

/** A refusal must be one line naming a file, folder or field. */
function named(msg: string, names: string[]): boolean {
  return !msg.includes("\n") && (names.some((n) => msg.includes(n)) || /(^|\s)\/\w/.test(msg));
}

async function inProcess(
  file: string,
  names: string[],
  preflightImages: number,
): Promise<{ cls: string; msg: string }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<"hang">((r) => (timer = setTimeout(() => r("hang"), HANG_MS)));
  try {
    const r = await Promise.race([
      prepareBench(file, { preflightImages }).then((p) => p),
      hang,
    ]);
    if (r === "hang") return { cls: "hang", msg: file };
    const ids = r.plan.cells.map((c) => c.id);
    if (ids.length === 0 || new Set(ids).size !== ids.length) {
      return { cls: "crash / stack trace", msg: `${file}: plan with duplicate or no cells` };
    }
    return { cls: "accepted", msg: "" };
  } catch (e) {
    if (!(e instanceof VitqError)) {
      return { cls: "crash / stack trace", msg: `${file}: ${(e as Error)?.stack ?? e}` };
    }
    if (!named(e.message, names)) {
      return { cls: "unnamed or multi-line error", msg: `${file}: ${e.message}` };
    }
    return { cls: "refused (exit 2)", msg: e.message };
  } finally {
    clearTimeout(timer);
  }
}

/** Bytes of every file under `dir` (for "untouched" checks). */
async function snapshot(paths: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (p: string) => {
    const st = await Deno.stat(p).catch(() => null);
    if (!st) return;
    if (st.isDirectory) {
      for await (const e of Deno.readDir(p)) await walk(`${p}/${e.name}`);
    } else {
      const b = await Deno.readFile(p);
      out.set(p, `${b.length}:${b.reduce((h, x) => (Math.imul(h, 31) + x) >>> 0, 7)}`);
    }
  };
  for (const p of paths) await walk(p);
  return out;
}

/** Run the CLI with a hang guard. */
async function cliGuarded(args: string[]): Promise<{ code: number; stderr: string } | "hang"> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `${ROOT}cli/bench.ts`, ...args, "--report", REPORT_DIR],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<"hang">((r) => (timer = setTimeout(() => r("hang"), HANG_MS)));
  const r = await Promise.race([child.output(), hang]);
  clearTimeout(timer);
  if (r === "hang") {
    child.kill("SIGKILL");
    await child.output();
    return "hang";
  }
  return { code: r.code, stderr: new TextDecoder().decode(r.stderr) };
}

async function mkfifo(path: string): Promise<void> {
  const r = await new Deno.Command("mkfifo", { args: [path] }).output();
  assert.ok(r.success, `mkfifo ${path}`);
}

const TINY = {
  name: "fuzz-tiny",
  models: ["vit_fmnist"],
  methods: ["minmax"],
  bits: [{ w: 8, a: 8 }],
  dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 2 } },
  calibration: { size: 8, seeds: [0], split: "train" },
  batchSize: 20,
  threads: 1,
  speed: { enabled: false },
};

async function shippedManifests(): Promise<{ name: string; doc: Json }[]> {
  const out = [{ name: "tiny", doc: structuredClone(TINY) as Json }];
  for (const dir of ["experiments", "experiments/paper"]) {
    for await (const e of Deno.readDir(`${ROOT}${dir}`)) {
      if (!e.isFile || !e.name.endsWith(".json") || e.name === "schema.json") continue;
      if (e.name.startsWith("_")) continue;
      const doc = JSON.parse(await Deno.readTextFile(`${ROOT}${dir}/${e.name}`));
      delete doc.$schema;
      out.push({ name: `${dir}/${e.name}`, doc });
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

/** One seeded mutation of `doc`; returns the text to write and what was done. */
function mutate(doc: Json, rnd: () => number, fifo: string): { text: string; ops: string[] } {
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
  const d = structuredClone(doc);
  const ops: string[] = [];
  const n = 1 + Math.floor(rnd() * 3);
  for (let i = 0; i < n; i++) {
    const all = nodes(d);
    const op = pick([
      "delete",
      "type",
      "number",
      "proto",
      "duplicate",
      "path",
      "name",
      "huge",
    ]);
    if (op === "delete" && all.length) {
      const p = pick(all);
      set(d, p, undefined);
      ops.push(`delete /${p.join("/")}`);
    } else if (op === "type" && all.length) {
      const p = pick(all);
      const v = pick<Json>([null, true, "x", 7, -1.5, [], {}, [1, 2], { a: 1 }]);
      set(d, p, v);
      ops.push(`type /${p.join("/")}=${JSON.stringify(v)}`);
    } else if (op === "number") {
      const nums = all.filter((p) => typeof get(d, p) === "number");
      if (!nums.length) continue;
      const p = pick(nums);
      const v = pick([-1, 0, 2 ** 31, 2 ** 53, 1e308, -1e308, 0.5, 1e6, -2147483649, 4097, 1e9]);
      set(d, p, v);
      ops.push(`number /${p.join("/")}=${v}`);
    } else if (op === "proto") {
      const name = pick(PROTO);
      // deno-lint-ignore no-explicit-any
      const m = d as any;
      const where = pick(["method", "model", "option", "label", "name"]);
      if (where === "method" && Array.isArray(m?.methods) && m.methods.length) {
        m.methods[0] = typeof m.methods[0] === "object" && m.methods[0]
          ? { ...m.methods[0], name }
          : name;
      } else if (where === "model" && Array.isArray(m?.models)) m.models[0] = name;
      else if (where === "option" && Array.isArray(m?.methods)) {
        const opts = JSON.parse(`{"${name}": 1}`);
        m.methods[0] = { name: "minmax", options: opts };
      } else if (where === "label" && Array.isArray(m?.methods)) {
        m.methods[0] = { name: "minmax", label: name };
      } else if (m && typeof m === "object") m.name = name;
      ops.push(`proto ${where}=${name}`);
    } else if (op === "duplicate") {
      const arrs = all.filter((p) => Array.isArray(get(d, p)) && (get(d, p) as Json[]).length);
      if (!arrs.length) continue;
      const p = pick(arrs);
      const a = get(d, p) as Json[];
      a.push(structuredClone(a[0]));
      ops.push(`duplicate /${p.join("/")}`);
    } else if (op === "path") {
      const v = pick([
        "",
        "/",
        "/dev/zero",
        "/dev/null",
        "/proc/self",
        "../../../../etc/passwd",
        "x".repeat(5000),
        fifo,
        "/dev/zero.onnx",
        "models/registry.json",
        "models/vit_fmnist.json",
        "models",
        "nul\u0000l.onnx",
      ]);
      // deno-lint-ignore no-explicit-any
      const m = d as any;
      if (rnd() < 0.5 && m?.dataset && typeof m.dataset === "object") m.dataset.path = v;
      else if (Array.isArray(m?.models)) m.models[0] = v.endsWith(".onnx") ? v : `${v}`;
      ops.push(`path ${JSON.stringify(v.slice(0, 40))}`);
    } else if (op === "name") {
      // deno-lint-ignore no-explicit-any
      const m = d as any;
      if (!m || typeof m !== "object") continue;
      if (rnd() < 0.5) {
        m.name = pick(["", "a".repeat(300), "../x", "a/b", ".hidden", "x\ny", "ok-name"]);
        ops.push(`name ${JSON.stringify(String(m.name).slice(0, 20))}`);
      } else if (Array.isArray(m.methods)) {
        const label = pick(["a|b", "a\nb", "x".repeat(100), "", "tab\tlabel", "fine label"]);
        m.methods[0] = { name: "minmax", label };
        ops.push(`label ${JSON.stringify(label.slice(0, 20))}`);
      }
    } else if (op === "huge") {
      // deno-lint-ignore no-explicit-any
      const m = d as any;
      if (!m || typeof m !== "object") continue;
      const f = pick(["threads", "batchSize", "repetitions", "size", "seeds", "perClass"]);
      if (f === "threads") m.threads = pick([1e6, 64, 257]);
      else if (f === "batchSize") m.batchSize = pick([1e9, 5000]);
      else if (f === "repetitions") m.speed = { repetitions: 1e9 };
      else if (f === "size" && isObj(m.calibration)) m.calibration.size = pick([1e9, 999999]);
      else if (f === "seeds" && isObj(m.calibration)) m.calibration.seeds = [2 ** 31];
      else if (f === "perClass" && isObj(m.dataset)) {
        m.dataset.subset = { rule: "first", perClass: pick([1e7, 1e6]) };
      }
      ops.push(`huge ${f}`);
    }
  }
  let text = JSON.stringify(d, null, 2);
  const r = rnd();
  if (r < 0.08) {
    text = text.slice(0, Math.floor(rnd() * text.length));
    ops.push("truncate");
  } else if (r < 0.1) {
    text = pick(["[]", "null", '"str"', "42", "", "{", "\u0000"]);
    ops.push(`document ${JSON.stringify(text)}`);
  }
  return { text, ops };
}

Deno.test("fuzz: >= 300 manifest mutations and >= 40 bad models, cards and data files", async () => {
  const t0 = performance.now();
  const dir = await tmpDir();
  const tally = new Tally();
  const fifo = `${dir}/fifo.json`;
  await mkfifo(fifo);

  // ---- manifests, in-process through prepareBench ----
  const bases = await shippedManifests();
  const rnd = prng(SEED);
  const acceptedTiny: string[] = [];
  for (let i = 0; i < MUTATIONS; i++) {
    const base = bases[i % bases.length];
    const { text, ops } = mutate(base.doc, rnd, fifo);
    const file = `${dir}/m${i}.json`;
    await Deno.writeTextFile(file, text);
    const r = await inProcess(file, [file, "--threads", ROOT, dir], 0);
    tally.add("manifest", r.cls, `${base.name} ${ops.join("; ")}: ${r.msg.slice(0, 300)}`);
    if (r.cls === "accepted" && base.name === "tiny") acceptedTiny.push(file);
  }
  // odd manifest paths: a fifo, a device, a folder, nothing
  for (const file of [fifo, "/dev/zero", "/dev/null", dir, `${dir}/none.json`]) {
    const r = await inProcess(file, [file], 0);
    tally.add("manifest", r.cls, `${file}: ${r.msg.slice(0, 300)}`);
  }

  // ---- bad models, cards and Fashion-MNIST files ----
  const model = await Deno.readFile(`${FIXTURES}tiny_vit_op13.onnx`);
  const card = { ...FIXTURE_CARD, name: "fz" };
  const fm = await loadFashionMnist(`${ROOT}datasets/fashion-mnist`, "test");
  const N = 100;
  const px = 28 * 28;
  const goodImages = encodeIdx({ dims: [N, 28, 28], data: fm.pixels.slice(0, N * px) }, false);
  const goodLabels = encodeIdx({ dims: [N], data: Uint8Array.from(fm.labels.slice(0, N)) }, false);
  const calibImages = await Deno.readFile(
    `${ROOT}datasets/fashion-mnist/calib-images-idx3-ubyte.gz`,
  );
  const calibLabels = await Deno.readFile(
    `${ROOT}datasets/fashion-mnist/calib-labels-idx1-ubyte.gz`,
  );
  const calibIds = await Deno.readFile(`${ROOT}datasets/fashion-mnist/calib-ids.txt`);

  let k = 0;
  const fileCase = async (
    kind: string,
    setup: (d: string) => Promise<{ models?: string[]; dataPath?: string; imagenet?: boolean }>,
  ) => {
    const d = `${dir}/c${k++}`;
    await Deno.mkdir(d);
    const s = await setup(d);
    const m = s.imagenet
      ? {
        name: `fz${k}`,
        models: s.models ?? [`${FIXTURES}tiny_vit_rgb.onnx`],
        methods: ["minmax"],
        bits: [{ w: 8, a: 8 }],
        dataset: {
          name: "imagenet",
          path: s.dataPath,
          split: "val",
          subset: { rule: "first", perClass: 1 },
        },
        calibration: { size: 2, seeds: [0], split: "val" },
        batchSize: 4,
        threads: 1,
        speed: { enabled: false },
      }
      : {
        name: `fz${k}`,
        models: s.models ?? [`${d}/fz.onnx`],
        methods: ["minmax"],
        bits: [{ w: 8, a: 8 }],
        dataset: {
          name: "fashion-mnist",
          ...(s.dataPath ? { path: s.dataPath } : {}),
          subset: { rule: "first", perClass: 1 },
        },
        calibration: { size: 4, seeds: [0], split: "train" },
        batchSize: 10,
        threads: 1,
        speed: { enabled: false },
      };
    const file = `${d}/manifest.json`;
    await Deno.writeTextFile(file, JSON.stringify(m));
    const r = await inProcess(file, [file, d, ROOT, "model "], 4);
    tally.add("files", r.cls, `${kind}: ${r.msg.slice(0, 300)}`);
    return { file, cls: r.cls, kind, d };
  };
  const withModel =
    (bytes: Uint8Array | null, c: unknown, cardRaw?: string) => async (d: string) => {
      if (bytes) await Deno.writeFile(`${d}/fz.onnx`, bytes);
      if (cardRaw !== undefined) await Deno.writeTextFile(`${d}/fz.json`, cardRaw);
      else await Deno.writeTextFile(`${d}/fz.json`, JSON.stringify(c));
      return {};
    };
  const poisoned = (v: number) => {
    const g = Graph.fromBytes(model, "fz");
    let big: Tensor | undefined;
    for (const t of g.initializers.values()) {
      if (t.dataType === 1 && (!big || t.size > big.size)) big = t;
    }
    g.setInitializer(Tensor.fromFloat32(big!.name, big!.dims, new Float32Array(big!.size).fill(v)));
    return g.toBytes();
  };
  const cases: { file: string; cls: string; kind: string; d: string }[] = [];
  const add = async (kind: string, setup: Parameters<typeof fileCase>[1]) =>
    cases.push(await fileCase(kind, setup));

  // models
  await add("control: good model", withModel(model, card));
  await add("NaN weights", withModel(poisoned(NaN), card));
  await add("+Inf weights", withModel(poisoned(Infinity), card));
  await add("-Inf weights", withModel(poisoned(-Infinity), card));
  await add("truncated ONNX", withModel(model.slice(0, model.length >> 1), card));
  await add(
    "random ONNX",
    withModel(Uint8Array.from({ length: 4096 }, (_, i) => (i * 97 + 13) % 251), card),
  );
  await add("zero-byte ONNX", withModel(new Uint8Array(0), card));
  await add("JSON as ONNX", withModel(new TextEncoder().encode('{"a": 1}'), card));
  await add("ONNX is a folder", async (d) => {
    await Deno.mkdir(`${d}/fz.onnx`);
    await Deno.writeTextFile(`${d}/fz.json`, JSON.stringify(card));
    return {};
  });
  await add("ONNX is a fifo", async (d) => {
    await mkfifo(`${d}/fz.onnx`);
    await Deno.writeTextFile(`${d}/fz.json`, JSON.stringify(card));
    return {};
  });
  await add("ONNX dangling symlink", async (d) => {
    await Deno.symlink(`${d}/nowhere.onnx`, `${d}/fz.onnx`);
    await Deno.writeTextFile(`${d}/fz.json`, JSON.stringify(card));
    return {};
  });
  await add("RGB model on grayscale data", async (d) => {
    await Deno.copyFile(`${FIXTURES}tiny_vit_rgb.onnx`, `${d}/fz.onnx`);
    await Deno.writeTextFile(`${d}/fz.json`, JSON.stringify({ ...card, classes: 10 }));
    return {};
  });
  // cards
  const { input: _i, ...noInput } = card;
  const { normalization: _n, ...noNorm } = card;
  const cardCases: [string, unknown, string?][] = [
    ["card without input", noInput],
    ["card without normalization", noNorm],
    ["card with 3 channels", { ...card, input: { ...card.input, channels: 3 } }],
    ["card with 32x32 size", { ...card, input: { ...card.input, height: 32, width: 32 } }],
    ["card with zero std", { ...card, normalization: { mean: [0.2], std: [0] } }],
    ["card with negative std", { ...card, normalization: { mean: [0.2], std: [-1] } }],
    ["card with string std", { ...card, normalization: { mean: [0.2], std: ["x"] } }],
    ["card with 3 means", { ...card, normalization: { mean: [0, 0, 0], std: [1] } }],
    ["card with 5 classes", { ...card, classes: 5 }],
    ["card with 1000 classes", { ...card, classes: 1000 }],
    ["card null", null],
    ["card array", []],
    ["card truncated JSON", null, JSON.stringify(card).slice(0, 30)],
    ["card zero-byte", null, ""],
    ["card name with |", { ...card, name: "a|b" }],
    ["card height 1e9", { ...card, input: { ...card.input, height: 1e9 } }],
    ["card channels 0", { ...card, input: { ...card.input, channels: 0 } }],
  ];
  for (const [kind, c, raw] of cardCases) await add(kind, withModel(model, c, raw));
  await add("card missing", async (d) => {
    await Deno.writeFile(`${d}/fz.onnx`, model);
    return {};
  });
  await add("card is a fifo", async (d) => {
    await Deno.writeFile(`${d}/fz.onnx`, model);
    await mkfifo(`${d}/fz.json`);
    return {};
  });
  // Fashion-MNIST files
  const fmCase = (kind: string, files: Record<string, Uint8Array | "dir" | null>) =>
    add(kind, async (d) => {
      await Deno.writeFile(`${d}/fz.onnx`, model);
      await Deno.writeTextFile(`${d}/fz.json`, JSON.stringify(card));
      const data = `${d}/data`;
      await Deno.mkdir(data);
      const all: Record<string, Uint8Array | "dir" | null> = {
        "t10k-images-idx3-ubyte": goodImages,
        "t10k-labels-idx1-ubyte": goodLabels,
        "calib-images-idx3-ubyte.gz": calibImages,
        "calib-labels-idx1-ubyte.gz": calibLabels,
        "calib-ids.txt": calibIds,
        ...files,
      };
      for (const [name, b] of Object.entries(all)) {
        if (b === "dir") await Deno.mkdir(`${data}/${name}`);
        else if (b) await Deno.writeFile(`${data}/${name}`, b);
      }
      return { dataPath: data };
    });
  const labelsWith = (v: number) => {
    const l = Uint8Array.from(fm.labels.slice(0, N));
    l[0] = v;
    return encodeIdx({ dims: [N], data: l }, false);
  };
  await fmCase("control: good data copy", {});
  await fmCase("label 10", { "t10k-labels-idx1-ubyte": labelsWith(10) });
  await fmCase("label 255", { "t10k-labels-idx1-ubyte": labelsWith(255) });
  await fmCase("zero-byte labels", { "t10k-labels-idx1-ubyte": new Uint8Array(0) });
  await fmCase("zero-byte images", { "t10k-images-idx3-ubyte": new Uint8Array(0) });
  await fmCase("truncated images", { "t10k-images-idx3-ubyte": goodImages.slice(0, 5000) });
  await fmCase("bad magic", { "t10k-images-idx3-ubyte": Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) });
  await fmCase("label count mismatch", {
    "t10k-labels-idx1-ubyte": encodeIdx(
      { dims: [N - 1], data: goodLabels.slice(8, 8 + N - 1) },
      false,
    ),
  });
  await fmCase("corrupt gzip", {
    "t10k-images-idx3-ubyte": null,
    "t10k-images-idx3-ubyte.gz": Uint8Array.of(0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5),
  });
  const floatType = goodImages.slice();
  floatType[2] = 0x0d;
  await fmCase("float IDX", { "t10k-images-idx3-ubyte": floatType });
  await fmCase("4-D IDX", {
    "t10k-images-idx3-ubyte": encodeIdx(
      { dims: [N, 1, 28, 28], data: fm.pixels.slice(0, N * px) },
      false,
    ),
  });
  await fmCase("labels file is a folder", { "t10k-labels-idx1-ubyte": "dir" });
  await fmCase("labels file missing", { "t10k-labels-idx1-ubyte": null });
  await fmCase("calib-ids count mismatch", { "calib-ids.txt": new TextEncoder().encode("1 2 3") });

  // ImageNet folders with bad images (the first image of class 0 is the bad one)
  const WN = ["n01440764", "n01443537", "n01484850"];
  const jpeg = async (w: number, h: number, seed: number) =>
    new Uint8Array(
      await sharp(
        Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * (seed + 3)) % 256),
        { raw: { width: w, height: h, channels: 3 } },
      ).jpeg().toBuffer(),
    );
  const png = (
    w: number,
    h: number,
    opts: { gray?: boolean; alpha?: boolean; depth16?: boolean },
  ) => {
    const ch = opts.gray ? 1 : opts.alpha ? 4 : 3;
    const n = w * h * ch;
    const raw = opts.depth16
      ? new Uint8Array(Uint16Array.from({ length: n }, (_, i) => (i * 257 * 7) % 65536).buffer)
      : Uint8Array.from({ length: n }, (_, i) => (i * 7) % 256);
    return sharp(raw, {
      raw: {
        width: w,
        height: h,
        channels: ch as 1 | 3 | 4,
        ...(opts.depth16 ? { premultiplied: false } : {}),
      },
    }).toColourspace(opts.depth16 ? (opts.gray ? "grey16" : "rgb16") : opts.gray ? "b-w" : "srgb")
      .png().toBuffer().then((b) => new Uint8Array(b));
  };
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let j = 0; j < 8; j++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (b: Uint8Array) => {
    let c = 0xffffffff;
    for (const x of b) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const hugePng = () => {
    const ihdr = new Uint8Array(17);
    ihdr.set(new TextEncoder().encode("IHDR"));
    const v = new DataView(ihdr.buffer);
    v.setUint32(4, 100000);
    v.setUint32(8, 100000);
    ihdr.set([8, 2, 0, 0, 0], 12);
    const out = new Uint8Array(8 + 4 + 17 + 4 + 12);
    out.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    new DataView(out.buffer).setUint32(8, 13);
    out.set(ihdr, 12);
    new DataView(out.buffer).setUint32(29, crc(ihdr));
    out.set([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82], 33);
    return out;
  };
  const cmyk = new Uint8Array(
    await sharp(await jpeg(40, 36, 5)).toColourspace("cmyk").jpeg().toBuffer(),
  );
  const inetCase = (kind: string, bad: (p: string) => Promise<void>) =>
    add(kind, async (d) => {
      const root = `${d}/inet`;
      for (const [c, w] of WN.entries()) {
        await Deno.mkdir(`${root}/val/${w}`, { recursive: true });
        for (let i = 0; i < 2; i++) {
          await Deno.writeFile(
            `${root}/val/${w}/img_${c}_${i}.JPEG`,
            await jpeg(40 + 3 * i, 36, c + i),
          );
        }
      }
      await bad(`${root}/val/${WN[0]}/a_first`);
      return { imagenet: true, dataPath: root };
    });
  await inetCase("control: good images", () => Promise.resolve());
  await inetCase("zero-byte JPEG", (p) => Deno.writeFile(`${p}.JPEG`, new Uint8Array(0)));
  await inetCase("truncated JPEG", async (p) => {
    const b = await jpeg(40, 36, 9);
    await Deno.writeFile(`${p}.JPEG`, b.slice(0, b.length >> 1));
  });
  await inetCase(
    "random bytes JPEG",
    (p) => Deno.writeFile(`${p}.JPEG`, Uint8Array.from({ length: 999 }, (_, i) => (i * 31) % 256)),
  );
  await inetCase("text as PNG", (p) => Deno.writeTextFile(`${p}.png`, "not an image"));
  await inetCase("CMYK JPEG", (p) => Deno.writeFile(`${p}.JPEG`, cmyk));
  await inetCase(
    "16-bit PNG",
    async (p) => Deno.writeFile(`${p}.png`, await png(30, 30, { depth16: true })),
  );
  await inetCase(
    "grayscale PNG",
    async (p) => Deno.writeFile(`${p}.png`, await png(30, 30, { gray: true })),
  );
  await inetCase(
    "RGBA PNG",
    async (p) => Deno.writeFile(`${p}.png`, await png(30, 30, { alpha: true })),
  );
  await inetCase("1x1 JPEG", async (p) => Deno.writeFile(`${p}.JPEG`, await jpeg(1, 1, 3)));
  await inetCase("huge PNG header", (p) => Deno.writeFile(`${p}.png`, hugePng()));
  await inetCase("symlinked image", async (p) => {
    await Deno.writeFile(`${p}_target.bin`, await jpeg(40, 36, 4));
    await Deno.symlink(`${p}_target.bin`, `${p}.JPEG`);
  });
  await inetCase("dangling symlink image", (p) => Deno.symlink(`${p}_gone.JPEG`, `${p}.JPEG`));
  await inetCase("fifo named .JPEG", (p) => mkfifo(`${p}.JPEG`));

  // ---- through the real CLI: exit codes, one line, nothing touched on failure ----
  const db = `${dir}/fuzz.duckdb`;
  const tables = `${dir}/tables`;
  const tinyFile = `${dir}/tiny.json`;
  await Deno.writeTextFile(tinyFile, JSON.stringify(TINY));
  const first = await cliGuarded([tinyFile, "--db", db, "--tables", tables, "--quiet"]);
  assert.ok(first !== "hang" && first.code === 0, JSON.stringify(first));
  // correct numbers: the stored FP32 baseline equals an independent evaluation
  {
    const s = await Store.open(db, { readOnly: true });
    try {
      const fp = await s.query(`select n, correct from fp_baselines`);
      const res = await s.query(
        `select r.correct, r.top1, r.subset_size,
                (select count(*)::int from predictions p where p.cell_id = r.cell_id and p.true_rank = 0) as c2
           from results r`,
      );
      const idx: number[] = [];
      for (let c = 0; c < 10; c++) {
        let got = 0;
        for (let i = 0; i < fm.labels.length && got < 2; i++) {
          if (fm.labels[i] === c) {
            idx.push(i);
            got++;
          }
        }
      }
      idx.sort((a, b) => a - b);
      const vit = JSON.parse(await Deno.readTextFile(`${ROOT}models/vit_fmnist.json`));
      const ev = await evaluate(
        await runtime(),
        await Deno.readFile(`${ROOT}models/vit_fmnist.onnx`),
        makeSource(fm, idx, vit),
        20,
      );
      assert.equal(
        fp[0].correct,
        ev.correct,
        "FP32 baseline differs from an independent evaluation",
      );
      assert.equal(res.length, 1);
      assert.equal(res[0].correct, res[0].c2);
      assert.equal(
        res[0].top1,
        (100 * (res[0].correct as number)) / (res[0].subset_size as number),
      );
      tally.add("cli", "ran (exit 0, numbers checked)", "tiny");
    } finally {
      s.close();
    }
  }
  const before = await snapshot([db, tables]);
  const cliCases: { what: string; args: string[] }[] = [
    { what: "fifo manifest", args: [fifo] },
    { what: "/dev/zero manifest", args: ["/dev/zero"] },
    ...cases.filter((c) => c.cls === "refused (exit 2)").slice(0, 40).filter((_, i) => i % 8 === 0)
      .map((c) => ({ what: c.kind, args: [c.file] })),
    { what: "--db ''", args: [tinyFile, "--db", ""] },
    { what: "--tables ''", args: [tinyFile, "--tables", ""] },
  ];
  for (let i = 0; i < MUTATIONS && cliCases.length < 14; i += 37) {
    cliCases.push({ what: `mutation ${i}`, args: [`${dir}/m${i}.json`] });
  }
  for (const c of cliCases) {
    const args = [...c.args];
    if (!args.includes("--db")) args.push("--db", db);
    if (!args.includes("--tables")) args.push("--tables", tables);
    const r = await cliGuarded([...args, "--quiet"]);
    if (r === "hang") {
      tally.add("cli", "hang", c.what);
      continue;
    }
    const lines = r.stderr.trim().split("\n");
    if (r.code === 0) {
      tally.add("cli", "accepted", c.what);
      continue;
    }
    const ok = r.code === 2 && lines.length === 1 && /^error: /.test(lines[0]) &&
      !/\n\s+at /.test(r.stderr);
    tally.add(
      "cli",
      ok ? "refused (exit 2)" : "crash / stack trace",
      `${c.what}: ${r.code} ${r.stderr}`,
    );
    const after = await snapshot([db, tables]);
    if (JSON.stringify([...after]) !== JSON.stringify([...before])) {
      tally.add("cli", "files touched", c.what);
    }
  }
  // an accepted tiny mutation runs through the CLI and exits 0
  for (const file of acceptedTiny.slice(0, 1)) {
    const r = await cliGuarded([
      file,
      "--db",
      `${dir}/acc.duckdb`,
      "--tables",
      `${dir}/acc`,
      "--quiet",
    ]);
    tally.add(
      "cli",
      r !== "hang" && r.code === 0 ? "ran (exit 0, numbers checked)" : "crash / stack trace",
      file,
    );
  }

  tally.print();
  console.log(`fuzz: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  assert.ok(tally.total("manifest") >= 300, "at least 300 manifest mutations");
  assert.ok(tally.total("files") >= 40, "at least 40 bad models, cards and data files");
  assert.deepEqual(tally.bad(), [], "cases in a bad class");
  // the good controls pass, the poisoned ones are refused
  const byKind = new Map(cases.map((c) => [c.kind, c.cls]));
  for (const k of ["control: good model", "control: good data copy", "control: good images"]) {
    assert.equal(byKind.get(k), "accepted", k);
  }
  for (
    const k of [
      "NaN weights",
      "+Inf weights",
      "label 10",
      "card with zero std",
      "dangling symlink image",
    ]
  ) {
    assert.equal(byKind.get(k), "refused (exit 2)", k);
  }
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(REPORT_DIR, { recursive: true });
});

Deno.test("non-finite logits make the image wrong, never right", async () => {
  const g = Graph.fromBytes(await Deno.readFile(`${FIXTURES}tiny_vit_op13.onnx`), "tiny");
  let big: Tensor | undefined;
  for (const t of g.initializers.values()) {
    if (t.dataType === 1 && (!big || t.size > big.size)) big = t;
  }
  const fm = await loadFashionMnist(`${ROOT}datasets/fashion-mnist`, "test");
  const src = makeSource(fm, Array.from({ length: 20 }, (_, i) => i), FIXTURE_CARD);
  for (const v of [NaN, Infinity]) {
    g.setInitializer(Tensor.fromFloat32(big!.name, big!.dims, new Float32Array(big!.size).fill(v)));
    const ev = await evaluate(await runtime(), g.toBytes(), src, 10);
    assert.equal(ev.nonFinite, 20, `${v}`);
    assert.equal(ev.correct, 0);
    assert.equal(ev.top1, 0);
    assert.equal(ev.top5, 0);
    assert.ok(ev.preds.every((p) => p === -1));
    assert.ok(ev.trueRank.every((r) => r === 10));
  }
  assert.equal(nonFiniteMessage(3), "non-finite logits on 3 images");
  // a '|' or a line break in a name cannot break a Markdown table row
  assert.equal(mdText("a|b\nc"), "a\\|b c");
});
