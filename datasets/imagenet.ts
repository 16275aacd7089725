/**
 * ImageNet-style datasets on disk: image lists with labels, class order and
 * the calibration pool. Pixels are read later (see `image_source.ts`).
 *
 * ## Accepted layouts (`root` is the folder you name)
 *
 * 1. Class folders: `<root>/<split>/<wnid>/<file>` for `split` = `train` or
 *    `val` (torchvision `ImageFolder` / timm layout). Files in nested folders
 *    below a class folder count for that class.
 * 2. Flat validation: image files directly in `<root>/val/`, labelled by one
 *    of (first found wins):
 *    - `LOC_val_solution.csv` (Kaggle): header with columns `ImageId` and
 *      `PredictionString`; the image's file name without extension is the
 *      ImageId, the first token of PredictionString is its wnid;
 *    - `ILSVRC2012_validation_ground_truth.txt` (devkit): line i holds the
 *      1-based ILSVRC2012_ID of `ILSVRC2012_val_<i as 8 digits>.<ext>`; the
 *      file's number is read from its name. It needs a mapping from
 *      ILSVRC2012_ID to wnid: `synsets.txt` (preferred) or
 *      `LOC_synset_mapping.txt`, one `wnid description` per line, line k =
 *      ILSVRC2012_ID k (the devkit's `meta.mat` order, which is NOT sorted wnid
 *      order; `tools/imagenet_synsets.py` writes this file from `meta.mat`).
 *      A mapping of exactly 1000 wnids in sorted order (Kaggle's
 *      `LOC_synset_mapping.txt`) is refused here, since the ILSVRC2012_ID
 *      order of the real 1000 classes is not sorted.
 *
 *    These files are looked up in `<root>/` and then in
 *    `<root>/ILSVRC2012_devkit_t12/data/`.
 *
 * A split whose folder holds image files directly uses layout 2 (only `val`);
 * otherwise layout 1.
 *
 * Image files: names ending in `.jpeg`, `.jpg` or `.png`, any case (timm's
 * list); names starting with `.` are skipped. The container is detected from
 * the bytes, so a PNG named `.JPEG` is fine.
 *
 * ## Class order
 *
 * Class index = position in the sorted list of wnids (as timm and
 * torchvision). The list is, in order of preference:
 * the wnids of the mapping file (`LOC_synset_mapping.txt`, else `synsets.txt`)
 * when one exists in `<root>/`; else the union of the class folder names
 * under `<root>/train/` and `<root>/val/`; else (flat val with a CSV only) the
 * wnids named in the CSV. Put the mapping file in `<root>/` when your copy
 * holds only some classes, so that labels keep their 1000-class indices.
 * Folder names and labels must be WordNet ids (`n` + 8 digits) in that list.
 *
 * ## Order of images
 *
 * Class folders: by class index, then by (sub-folder, file name) within a
 * class, as `ImageFolder`. Flat: by file name. Names compare by code point.
 * `ids` are paths relative to `root` with `/` separators, e.g.
 * `val/n01440764/ILSVRC2012_val_00000293.JPEG` or
 * `val/ILSVRC2012_val_00000001.JPEG`.
 *
 * ## Calibration pool
 *
 * The `train` split when `<root>/train/` exists (all its images); otherwise
 * the validation images not used for evaluation ({@link heldOutIndices}).
 *
 * @module
 */
import { VitqError } from "../core/errors.ts";

/** A labelled list of image files. */
export interface ImageList {
  /** Always "imagenet". */
  dataset: string;
  /** "train" or "val". */
  split: string;
  /** Root folder the ids are relative to. */
  root: string;
  /** Which layout was found. */
  layout: "class-folders" | "flat";
  /** Paths relative to `root`, `/`-separated, in list order. */
  ids: string[];
  /** Full paths, same order. */
  paths: string[];
  /** Class index of each image. */
  labels: Int32Array;
  /** wnid of each class index (sorted). */
  classes: string[];
  /** Files that gave labels or the class list (mapping, CSV, ground truth). */
  labelFiles: string[];
  /** Label entries with no matching file (flat layout; 0 for class folders). */
  unmatchedLabels: number;
}

/** Image file extensions accepted (lower case, as timm). */
export const IMAGE_EXTENSIONS: readonly string[] = [".jpeg", ".jpg", ".png"];

const WNID = /^n\d{8}$/;
const MAPPING_FILES = ["LOC_synset_mapping.txt", "synsets.txt"];
const ID_MAPPING_FILES = ["synsets.txt", "LOC_synset_mapping.txt"];
const CSV_FILE = "LOC_val_solution.csv";
const GT_FILE = "ILSVRC2012_validation_ground_truth.txt";
const DEVKIT_DIR = "ILSVRC2012_devkit_t12/data";

/** True when `name` has an accepted image extension and is not hidden. */
export function isImageName(name: string): boolean {
  if (name.startsWith(".")) return false;
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((e) => lower.endsWith(e));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function join(a: string, b: string): string {
  return `${a.replace(/\/+$/, "")}/${b}`;
}

async function statOrNull(p: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(p);
  } catch {
    return null;
  }
}

interface Entry {
  name: string;
  isDir: boolean;
  isFile: boolean;
}

async function listDir(dir: string): Promise<Entry[]> {
  const out: Entry[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      let isDir = e.isDirectory, isFile = e.isFile;
      if (e.isSymlink) {
        const s = await statOrNull(join(dir, e.name));
        isDir = s?.isDirectory ?? false;
        isFile = s?.isFile ?? false;
      }
      // an image name that is not a readable file is named, never dropped silently
      if (!isDir && !isFile && isImageName(e.name)) {
        throw new VitqError(
          `${join(dir, e.name)}: listed image is not a regular file (${
            e.isSymlink ? "dangling or unreadable symlink" : "fifo, socket or device"
          }); remove it or fix the link`,
        );
      }
      out.push({ name: e.name, isDir, isFile });
    }
  } catch (err) {
    throw new VitqError(`${dir}: cannot read folder (${(err as Error).message})`);
  }
  return out.sort((a, b) => cmp(a.name, b.name));
}

/** Image files under `dir`, recursively, as paths relative to `dir`, in ImageFolder order. */
async function walkImages(dir: string): Promise<string[]> {
  // ImageFolder order: sorted by (folder path, file name)
  const groups: [string, string[]][] = [];
  const visit = async (rel: string) => {
    const entries = await listDir(rel ? join(dir, rel) : dir);
    const files = entries.filter((e) => e.isFile && isImageName(e.name)).map((e) => e.name);
    if (files.length) groups.push([rel, files]);
    for (const e of entries) {
      if (e.isDir && !e.name.startsWith(".")) await visit(rel ? `${rel}/${e.name}` : e.name);
    }
  };
  await visit("");
  groups.sort((a, b) => cmp(a[0], b[0]));
  return groups.flatMap(([rel, files]) => files.map((f) => (rel ? `${rel}/${f}` : f)));
}

async function findLabelFile(root: string, names: string[]): Promise<string | undefined> {
  for (const name of names) {
    for (const dir of [root, join(root, DEVKIT_DIR)]) {
      const p = join(dir, name);
      if ((await statOrNull(p))?.isFile) return p;
    }
  }
  return undefined;
}

/**
 * Read a synset mapping file: one `wnid [description]` per line (blank lines
 * skipped). Returns the wnids in file order.
 */
export async function readSynsetMapping(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new VitqError(`${path}: cannot read synset mapping (${(err as Error).message})`);
  }
  const out: string[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((line, i) => {
    const t = line.trim();
    if (!t) return;
    const wnid = t.split(/\s+/)[0];
    if (!WNID.test(wnid)) {
      throw new VitqError(
        `${path}:${i + 1}: expected "<wnid> <description>" with a WordNet id like n01440764, got "${
          t.slice(0, 40)
        }"`,
      );
    }
    if (seen.has(wnid)) throw new VitqError(`${path}:${i + 1}: wnid ${wnid} listed twice`);
    seen.add(wnid);
    out.push(wnid);
  });
  if (out.length === 0) throw new VitqError(`${path}: synset mapping is empty`);
  return out;
}

interface CsvLabels {
  byImage: Map<string, { wnid: string; line: number }>;
}

async function readValCsv(path: string): Promise<CsvLabels> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new VitqError(`${path}: cannot read labels (${(err as Error).message})`);
  }
  const lines = text.split(/\r?\n/);
  const header = (lines[0] ?? "").replace(/^\uFEFF/, "").split(",").map((s) => s.trim());
  const iId = header.indexOf("ImageId"), iPred = header.indexOf("PredictionString");
  if (iId < 0 || iPred < 0) {
    throw new VitqError(
      `${path}:1: expected a header with columns ImageId,PredictionString, got "${
        lines[0]?.slice(0, 60) ?? ""
      }"`,
    );
  }
  const byImage = new Map<string, { wnid: string; line: number }>();
  for (let i = 1; i < lines.length; i++) {
    const t = lines[i].trim();
    if (!t) continue;
    const cols = t.split(",");
    const id = cols[iId]?.trim(), pred = cols[iPred]?.trim();
    const wnid = pred?.split(/\s+/)[0];
    if (!id || !wnid) {
      throw new VitqError(
        `${path}:${i + 1}: expected "<ImageId>,<wnid> ..." , got "${t.slice(0, 60)}"`,
      );
    }
    if (!WNID.test(wnid)) {
      throw new VitqError(`${path}:${i + 1}: unknown wnid "${wnid}" (not a WordNet id)`);
    }
    if (byImage.has(id)) throw new VitqError(`${path}:${i + 1}: ImageId ${id} listed twice`);
    byImage.set(id, { wnid, line: i + 1 });
  }
  if (byImage.size === 0) throw new VitqError(`${path}: no label rows`);
  return { byImage };
}

async function readGroundTruth(path: string): Promise<number[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new VitqError(`${path}: cannot read labels (${(err as Error).message})`);
  }
  const lines = text.split(/\r?\n/);
  while (lines.length && lines[lines.length - 1].trim() === "") lines.pop();
  return lines.map((l, i) => {
    const t = l.trim();
    if (!/^\d+$/.test(t) || Number(t) < 1) {
      throw new VitqError(`${path}:${i + 1}: expected a 1-based ILSVRC2012_ID, got "${t}"`);
    }
    return Number(t);
  });
}

/** Split folder state: which layout, with the entries read. */
interface SplitScan {
  dir: string;
  exists: boolean;
  flatFiles: string[];
  classDirs: string[];
}

async function scanSplit(root: string, split: string): Promise<SplitScan> {
  const dir = join(root, split);
  const st = await statOrNull(dir);
  if (!st?.isDirectory) return { dir, exists: false, flatFiles: [], classDirs: [] };
  const entries = await listDir(dir);
  return {
    dir,
    exists: true,
    flatFiles: entries.filter((e) => e.isFile && isImageName(e.name)).map((e) => e.name),
    classDirs: entries.filter((e) => e.isDir && !e.name.startsWith(".")).map((e) => e.name),
  };
}

function checkWnid(name: string, dir: string, known: Set<string> | undefined, source: string) {
  if (!WNID.test(name)) {
    throw new VitqError(
      `${
        join(dir, name)
      }: unknown wnid "${name}": class folders must be named by WordNet id like n01440764`,
    );
  }
  if (known && !known.has(name)) {
    throw new VitqError(`${join(dir, name)}: unknown wnid "${name}" (not in ${source})`);
  }
}

/**
 * The sorted class list for `root` (see the module documentation), and the
 * file it came from, if any.
 */
export async function resolveClasses(
  root: string,
): Promise<{ classes: string[]; source: string; file?: string }> {
  for (const name of MAPPING_FILES) {
    const p = join(root, name);
    if ((await statOrNull(p))?.isFile) {
      return { classes: [...await readSynsetMapping(p)].sort(cmp), source: p, file: p };
    }
  }
  const names = new Set<string>();
  for (const split of ["train", "val"]) {
    const s = await scanSplit(root, split);
    if (s.exists && s.flatFiles.length === 0) {
      for (const d of s.classDirs) {
        checkWnid(d, s.dir, undefined, "");
        names.add(d);
      }
    }
  }
  if (names.size) {
    return { classes: [...names].sort(cmp), source: `class folders of ${root}/train and /val` };
  }
  const csv = await findLabelFile(root, [CSV_FILE]);
  if (csv) {
    const { byImage } = await readValCsv(csv);
    const set = new Set([...byImage.values()].map((v) => v.wnid));
    return { classes: [...set].sort(cmp), source: csv, file: csv };
  }
  throw new VitqError(
    `${root}: cannot determine the class list: no ${
      MAPPING_FILES.join(" or ")
    }, no class folders under train/ or val/, no ${CSV_FILE}`,
  );
}

/**
 * List the images of `split` (`train` or `val`) under an ImageNet-style
 * `root` with their labels. Throws {@link VitqError} for a missing folder, a
 * folder without images, labels that do not match the files, or an unknown
 * wnid.
 */
export async function loadImageFolder(root: string, split: string): Promise<ImageList> {
  root = root.replace(/\/+$/, "") || "/";
  const rs = await statOrNull(root);
  if (!rs?.isDirectory) throw new VitqError(`${root}: dataset folder not found`);
  const scan = await scanSplit(root, split);
  if (!scan.exists) {
    throw new VitqError(
      `${scan.dir}: split folder not found (expected ${root}/${split}/<wnid>/*.JPEG, or ${root}/val/*.JPEG with ${CSV_FILE} or ${GT_FILE})`,
    );
  }
  if (scan.flatFiles.length > 0 && scan.classDirs.some((d) => WNID.test(d))) {
    throw new VitqError(`${scan.dir}: holds both image files and class folders; use one layout`);
  }
  if (scan.flatFiles.length > 0) {
    if (split !== "val") {
      throw new VitqError(
        `${scan.dir}: image files directly in the ${split} folder; expected class folders ${split}/<wnid>/ (only val may be flat)`,
      );
    }
    if (!await findLabelFile(root, [CSV_FILE, GT_FILE])) {
      throw new VitqError(
        `${scan.dir}: image files without labels: expected ${root}/${CSV_FILE} or ${root}/${GT_FILE} (or class folders val/<wnid>/)`,
      );
    }
    const gt = await findLabelFile(root, [GT_FILE]);
    if (!await findLabelFile(root, [CSV_FILE]) && gt) {
      if (!await findLabelFile(root, ID_MAPPING_FILES)) throw needsMapping(gt, root);
    }
  }
  const { classes, source, file: classFile } = await resolveClasses(root);
  const index = new Map(classes.map((c, i) => [c, i]));
  if (scan.flatFiles.length > 0) return await loadFlatVal(root, scan, classes, index, classFile);
  if (scan.classDirs.length === 0) {
    throw new VitqError(
      `${scan.dir}: no images (expected class folders <wnid>/ with .JPEG/.jpg/.png files${
        split === "val" ? `, or image files with ${CSV_FILE} or ${GT_FILE}` : ""
      })`,
    );
  }
  const known = new Set(classes);
  const dirs = [...scan.classDirs];
  for (const d of dirs) checkWnid(d, scan.dir, known, source);
  dirs.sort((a, b) => index.get(a)! - index.get(b)!);
  const ids: string[] = [], labels: number[] = [];
  for (const d of dirs) {
    const files = await walkImages(join(scan.dir, d));
    if (files.length === 0) {
      throw new VitqError(`${join(scan.dir, d)}: no images (.JPEG/.jpg/.png) in class folder`);
    }
    const label = index.get(d)!;
    for (const f of files) {
      ids.push(`${split}/${d}/${f}`);
      labels.push(label);
    }
  }
  return {
    dataset: "imagenet",
    split,
    root,
    layout: "class-folders",
    ids,
    paths: ids.map((id) => join(root, id)),
    labels: Int32Array.from(labels),
    classes,
    labelFiles: classFile ? [classFile] : [],
    unmatchedLabels: 0,
  };
}

function needsMapping(gt: string, root: string): VitqError {
  return new VitqError(
    `${gt}: needs the ILSVRC2012_ID -> wnid mapping ${root}/synsets.txt (one "wnid description" per line in ILSVRC2012_ID order; tools/imagenet_synsets.py writes it from the devkit's meta.mat)`,
  );
}

function stem(name: string): string {
  const i = name.lastIndexOf(".");
  return i > 0 ? name.slice(0, i) : name;
}

async function loadFlatVal(
  root: string,
  scan: SplitScan,
  classes: string[],
  index: Map<string, number>,
  classFile: string | undefined,
): Promise<ImageList> {
  const files = scan.flatFiles; // sorted by name
  const labels = new Int32Array(files.length);
  const labelFiles: string[] = [];
  let unmatched: number;
  const csv = await findLabelFile(root, [CSV_FILE]);
  if (csv) {
    const { byImage } = await readValCsv(csv);
    let matched = 0;
    files.forEach((f, i) => {
      const e = byImage.get(stem(f));
      if (!e) {
        throw new VitqError(
          `${csv}: no label for ${scan.dir}/${f} (expected a row with ImageId ${stem(f)})`,
        );
      }
      const k = index.get(e.wnid);
      if (k === undefined) {
        throw new VitqError(
          `${csv}:${e.line}: unknown wnid "${e.wnid}" for ${f} (not in ${
            classFile ?? "the class list"
          })`,
        );
      }
      labels[i] = k;
      matched++;
    });
    unmatched = byImage.size - matched;
    labelFiles.push(csv);
  } else {
    const gt = await findLabelFile(root, [GT_FILE]);
    if (!gt) {
      throw new VitqError(
        `${scan.dir}: image files without labels: expected ${root}/${CSV_FILE} or ${root}/${GT_FILE} (or class folders val/<wnid>/)`,
      );
    }
    const mapFile = await findLabelFile(root, ID_MAPPING_FILES);
    if (!mapFile) throw needsMapping(gt, root);
    const idOrder = await readSynsetMapping(mapFile);
    if (idOrder.length === 1000 && idOrder.every((w, i) => i === 0 || idOrder[i - 1] < w)) {
      throw new VitqError(
        `${mapFile}: is in sorted wnid order, not ILSVRC2012_ID order; with ${GT_FILE} use a mapping in meta.mat order (tools/imagenet_synsets.py), or label with ${CSV_FILE}`,
      );
    }
    const ids = await readGroundTruth(gt);
    files.forEach((f, i) => {
      const m = /^ILSVRC2012_val_(\d{8})\.[^.]+$/.exec(f);
      if (!m) {
        throw new VitqError(
          `${gt}: cannot label ${scan.dir}/${f}: expected file names ILSVRC2012_val_<8 digits>.<ext>`,
        );
      }
      const n = Number(m[1]);
      if (n < 1 || n > ids.length) {
        throw new VitqError(
          `${gt}: no label for ${scan.dir}/${f} (the file has ${ids.length} lines)`,
        );
      }
      const id = ids[n - 1];
      if (id > idOrder.length) {
        throw new VitqError(
          `${gt}:${n}: ILSVRC2012_ID ${id} exceeds the ${idOrder.length} entries of ${mapFile}`,
        );
      }
      const wnid = idOrder[id - 1];
      const k = index.get(wnid);
      if (k === undefined) {
        throw new VitqError(
          `${mapFile}: unknown wnid "${wnid}" (not in ${classFile ?? "the class list"})`,
        );
      }
      labels[i] = k;
    });
    unmatched = ids.length - files.length;
    labelFiles.push(gt, mapFile);
  }
  if (classFile && !labelFiles.includes(classFile)) labelFiles.unshift(classFile);
  const ids = files.map((f) => `val/${f}`);
  return {
    dataset: "imagenet",
    split: "val",
    root,
    layout: "flat",
    ids,
    paths: ids.map((id) => join(root, id)),
    labels,
    classes,
    labelFiles,
    unmatchedLabels: Math.max(0, unmatched),
  };
}

/** True when `<root>/<split>/` exists and is a folder. */
export async function hasSplit(root: string, split: string): Promise<boolean> {
  return (await statOrNull(join(root, split)))?.isDirectory ?? false;
}

/**
 * Indices of `0..n-1` not in `evalIndices`, ascending: the held-out part of a
 * split used for evaluation.
 */
export function heldOutIndices(n: number, evalIndices: readonly number[]): number[] {
  const used = new Uint8Array(n);
  for (const i of evalIndices) {
    if (!Number.isInteger(i) || i < 0 || i >= n) {
      throw new VitqError(`calibration: evaluation index ${i} outside 0..${n - 1}`);
    }
    used[i] = 1;
  }
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (!used[i]) out.push(i);
  return out;
}

/** Where calibration images come from. */
export interface CalibrationPool {
  /** The list the indices refer to (the train list, or the evaluation list). */
  list: ImageList;
  /** Candidate indices into `list`, ascending. */
  indices: number[];
  /** "train", or "val-held-out" when no train split exists. */
  source: "train" | "val-held-out";
}

/**
 * Pool of calibration candidates for an evaluation on `evalList[evalIndices]`:
 * all of `<root>/train` when it exists (and the evaluation is not on train),
 * else the evaluation split's images outside `evalIndices`. Never overlaps the
 * evaluation set. Draw from it with `drawCalibration(pool.indices, size, seed)`.
 */
export async function calibrationPool(
  evalList: ImageList,
  evalIndices: readonly number[],
): Promise<CalibrationPool> {
  if (evalList.split !== "train" && await hasSplit(evalList.root, "train")) {
    const train = await loadImageFolder(evalList.root, "train");
    if (train.classes.join(",") !== evalList.classes.join(",")) {
      throw new VitqError(
        `${evalList.root}/train: class list differs from the ${evalList.split} split's`,
      );
    }
    return { list: train, indices: train.ids.map((_, i) => i), source: "train" };
  }
  const indices = heldOutIndices(evalList.ids.length, evalIndices);
  if (indices.length === 0) {
    throw new VitqError(
      `${evalList.root}: no calibration images: no train split, and the evaluation uses all ${evalList.ids.length} ${evalList.split} images (choose a subset rule)`,
    );
  }
  return { list: evalList, indices, source: "val-held-out" };
}

/**
 * Check that a list's classes fit a model with `classes` outputs; names the
 * mapping file to add when they do not.
 */
export function checkClassCount(list: ImageList, classes: number, model: string): void {
  if (list.classes.length !== classes) {
    throw new VitqError(
      `${list.root}: ${list.classes.length} classes found but model ${model} has ${classes} outputs; put LOC_synset_mapping.txt (all ${classes} wnids) in ${list.root}/ so labels keep their indices`,
    );
  }
}
