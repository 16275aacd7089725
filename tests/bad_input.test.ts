import assert from "node:assert/strict";
import { cli, FIXTURE_CARD, smallManifest, tmpDir, writeManifest } from "./helpers.ts";

/** Run a bad bench and check: exit 2, one line naming `expect`, database unchanged. */
async function expectBad(dir: string, db: string, args: string[], expect: RegExp) {
  const before = await Deno.readFile(db);
  const r = await cli("bench", [...args, "--db", db, "--quiet", "--tables", `${dir}/t`]);
  assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^error: /);
  assert.match(lines[0], expect);
  assert.deepEqual(await Deno.readFile(db), before, "database changed");
}

Deno.test("bad input: one-line errors, exit code 2, database left as it was", async () => {
  const dir = await tmpDir();
  const db = `${dir}/r.duckdb`;
  const good = await writeManifest(
    dir,
    smallManifest({
      name: "good",
      methods: ["minmax"],
      bits: [{ w: 8, a: 8 }],
      dataset: { name: "fashion-mnist", subset: { rule: "first", perClass: 2 } },
      speed: { enabled: false },
    }),
  );
  const ok = await cli("bench", [good, "--db", db, "--quiet", "--tables", `${dir}/t`]);
  assert.equal(ok.code, 0, ok.stderr);

  const malformed = `${dir}/malformed.json`;
  await Deno.writeTextFile(malformed, '{"name": "x", "models": [');
  await expectBad(dir, db, [malformed], /malformed\.json: malformed JSON/);

  const schema = await writeManifest(
    dir,
    smallManifest({ name: "schema", bits: [{ w: 4, a: 99 }] }),
  );
  await expectBad(dir, db, [schema], /schema\.json: \/bits\/0\/a: must be <= 16/);

  const extra = await writeManifest(dir, smallManifest({ name: "extra", colour: "red" }));
  await expectBad(
    dir,
    db,
    [extra],
    /extra\.json: \/: must NOT have additional properties "colour"/,
  );

  const method = await writeManifest(dir, smallManifest({ name: "method", methods: ["nope"] }));
  await expectBad(dir, db, [method], /method\.json: \/methods\/0\/name: unknown method "nope"/);

  const option = await writeManifest(
    dir,
    smallManifest({ name: "option", methods: [{ name: "percentile", options: { pct: 3 } }] }),
  );
  await expectBad(dir, db, [option], /\/methods\/0\/options\/pct: unknown option/);

  const model = await writeManifest(dir, smallManifest({ name: "model", models: ["vit_nope"] }));
  await expectBad(dir, db, [model], /model\.json: \/models\/0: unknown model "vit_nope"/);

  const data = await writeManifest(
    dir,
    smallManifest({
      name: "data",
      dataset: { name: "fashion-mnist", path: `${dir}/no-such-folder` },
    }),
  );
  await expectBad(dir, db, [data], /\/dataset\/path: folder .*no-such-folder does not exist/);

  const overlap = await writeManifest(
    dir,
    smallManifest({
      name: "overlap",
      dataset: { name: "fashion-mnist", subset: { rule: "all" } },
      calibration: { size: 8, split: "test" },
    }),
  );
  await expectBad(
    dir,
    db,
    [overlap],
    /\/calibration\/split: calibration from the "test" split would overlap/,
  );

  await Deno.writeTextFile(`${dir}/broken.onnx`, "this is not protobuf");
  await Deno.writeTextFile(
    `${dir}/broken.json`,
    JSON.stringify({ ...FIXTURE_CARD, name: "broken" }),
  );
  const onnx = await writeManifest(
    dir,
    smallManifest({ name: "onnx", models: [`${dir}/broken.onnx`] }),
  );
  await expectBad(dir, db, [onnx], /broken\.onnx: not a readable ONNX model/);

  await expectBad(dir, db, [`${dir}/missing.json`], /missing\.json: cannot read manifest/);
  await Deno.remove(dir, { recursive: true });
});
