import assert from "node:assert/strict";
import { parse as parseYaml } from "yaml";
import { DuckDBInstance } from "@duckdb/node-api";
import { assignShards, parseShard } from "../bench/shard.ts";
import { mergeShards } from "../bench/merge.ts";
import { readRows as rows } from "./helpers.ts";
import type { Cell } from "../bench/runner.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BENCH = `${ROOT}cli/bench.ts`;
const MERGE = `${ROOT}cli/merge.ts`;

const MANIFEST = {
  name: "shardtest",
  models: ["vit_fmnist", "deit_fmnist"],
  methods: ["minmax", { name: "percentile", label: "p99.9", options: { percentile: 99.9 } }],
  bits: [{ w: 8, a: 8 }, { w: 4, a: 4 }],
  dataset: { name: "fashion-mnist", split: "test", subset: { rule: "first", perClass: 10 } },
  calibration: { size: 8, seeds: [0], split: "train" },
  batchSize: 50,
  threads: 1,
  speed: { enabled: false },
};

async function deno(args: string[], cwd: string) {
  const o = await new Deno.Command(Deno.execPath(), { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  return {
    code: o.code,
    out: new TextDecoder().decode(o.stdout),
    err: new TextDecoder().decode(o.stderr),
  };
}

/** What must be equal between a single-process run and a merged sharded one. */
async function snapshot(db: string, dir: string) {
  const results = await rows(
    db,
    `select cell_id, method, label, model, w_bits, a_bits, calib_hash, eval_hash, top1, top5,
            correct, fp_top1, status from results order by cell_id`,
  );
  const preds = await rows(
    db,
    `select cell_id, count(*)::int as n, bit_xor(hash(image_idx, pred, true_rank))::varchar as h
       from predictions group by cell_id order by cell_id`,
  );
  const fp = await rows(
    db,
    `select model, model_sha, eval_hash, n, correct from fp_baselines order by model`,
  );
  const layers = await rows(
    db,
    `select cell_id, site, tensor, bits, scale from layers order by all`,
  );
  const tables: Record<string, string> = {};
  for (const f of ["top1.md", "top1.csv", "top1.tex"]) {
    tables[f] = await Deno.readTextFile(`${dir}/shardtest/${f}`);
  }
  return { results, preds, fp, layers, tables };
}

Deno.test("shard spec: i/n parsed 0-based, bad specs refused by name", () => {
  assert.deepEqual(parseShard("2/3"), { index: 2, count: 3 });
  for (const bad of ["3/3", "1/0", "a/b", "-1/3", "1", "1/3/4", "0/100000"]) {
    assert.throws(() => parseShard(bad), /--shard/);
  }
});

Deno.test("shard assignment: deterministic, disjoint, complete and balanced (LPT)", () => {
  const cells = Array.from(
    { length: 40 },
    (_, i) => ({ id: `c${String(i).padStart(2, "0")}` }),
  ) as Cell[];
  const costs = cells.map((_, i) => 1 + ((i * 7919) % 13));
  const a = assignShards(cells, costs, 3);
  assert.deepEqual(assignShards(cells, costs, 3), a);
  const load = [0, 0, 0];
  a.forEach((s, i) => (load[s] += costs[i]));
  assert.ok(a.every((s) => s >= 0 && s < 3));
  const total = costs.reduce((x, y) => x + y, 0);
  // LPT is within 4/3 of the optimum; the optimum is at least total/3 and the largest cost
  assert.ok(Math.max(...load) <= (4 / 3) * Math.max(total / 3, Math.max(...costs)) + 1e-9);
  // a cell costing more than all others together sits alone
  const big = assignShards(cells.slice(0, 4), [100, 1, 1, 1], 2);
  assert.equal(big.filter((s) => s === big[0]).length, 1);
});

Deno.test({
  name:
    "shards: --jobs 3 (three shard processes + merge) equals a single-process run; a killed shard rerun and merged gives the same; merge is idempotent and refuses conflicts",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vitq-shard-" });
    try {
      const man = `${dir}/shardtest.json`;
      await Deno.writeTextFile(man, JSON.stringify(MANIFEST));
      // single process
      const single = await deno(
        [
          "run",
          "-A",
          BENCH,
          man,
          "--db",
          `${dir}/single.duckdb`,
          "--tables",
          `${dir}/t1`,
          "--quiet",
        ],
        ROOT,
      );
      assert.equal(single.code, 0, single.err);
      // three local shard processes, merged
      const jobs = await deno(
        [
          "run",
          "-A",
          BENCH,
          man,
          "--jobs",
          "3",
          "--db",
          `${dir}/jobs.duckdb`,
          "--shard-dir",
          `${dir}/shards`,
          "--tables",
          `${dir}/t2`,
        ],
        ROOT,
      );
      assert.equal(jobs.code, 0, jobs.err + jobs.out);
      assert.match(jobs.out, /3 shard processes/);
      const a = await snapshot(`${dir}/single.duckdb`, `${dir}/t1`);
      const b = await snapshot(`${dir}/jobs.duckdb`, `${dir}/t2`);
      assert.equal(a.results.length, 8);
      assert.deepEqual(b, a);
      // each shard has a disjoint part; together all 8 cells
      const per = await Promise.all(
        [0, 1, 2].map((j) =>
          rows(`${dir}/shards/shard-${j}-of-3.duckdb`, `select cell_id from results`)
        ),
      );
      const ids = per.flat().map((r) => r.cell_id as string);
      assert.equal(new Set(ids).size, 8);
      assert.ok(per.every((p) => p.length > 0));

      // kill shard 1 after its first stored cell, rerun only it, merge into a fresh file
      const s1 = `${dir}/shards/shard-1-of-3.duckdb`;
      await Deno.remove(s1);
      // VITQ_FAULT (core/fault.ts): SIGKILL right after the first cell is committed
      const killed = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", BENCH, man, "--shard", "1/3", "--db", s1, "--quiet"],
        cwd: ROOT,
        env: { VITQ_FAULT: "cell-stored:1" },
        stdout: "null",
        stderr: "null",
      }).output();
      assert.equal(killed.signal, "SIGKILL");
      const partial = await rows(s1, `select count(*)::int as n from results`);
      assert.equal(partial[0].n, 1, `shard 1 was not interrupted after one cell`);
      const rerun = await deno(["run", "-A", BENCH, man, "--shard", "1/3", "--db", s1], ROOT);
      assert.equal(rerun.code, 0, rerun.err);
      const shardFiles = [0, 1, 2].map((j) => `${dir}/shards/shard-${j}-of-3.duckdb`);
      const m = await deno(
        ["run", "-A", MERGE, `${dir}/merged.duckdb`, ...shardFiles, "--tables", `${dir}/t3`],
        ROOT,
      );
      assert.equal(m.code, 0, m.err);
      assert.deepEqual(await snapshot(`${dir}/merged.duckdb`, `${dir}/t3`), a);

      // idempotent
      const again = await mergeShards(`${dir}/merged.duckdb`, shardFiles);
      assert.equal(again.added, 0);
      assert.equal(again.same, 8);
      assert.deepEqual(await snapshot(`${dir}/merged.duckdb`, `${dir}/t3`), a);

      // Parquet export of the merged file: every table, same row counts
      const pq = await deno(
        [
          "run",
          "-A",
          `${ROOT}cli/export_parquet.ts`,
          "--db",
          `${dir}/merged.duckdb`,
          "--out",
          `${dir}/pq`,
        ],
        ROOT,
      );
      assert.equal(pq.code, 0, pq.err);
      for (const t of ["results", "predictions", "layers", "fp_baselines", "runs"]) {
        const [n] = await rows(`${dir}/merged.duckdb`, `select count(*)::int as n from ${t}`);
        const [m] = await rows(
          `${dir}/merged.duckdb`,
          `select count(*)::int as n from read_parquet('${dir}/pq/${t}.parquet')`,
        );
        assert.equal(m.n, n.n, t);
      }

      // a shard whose cell disagrees with the merged one is refused, naming the cell
      const bad = `${dir}/bad.duckdb`;
      await Deno.copyFile(shardFiles[0], bad);
      const inst = await DuckDBInstance.create(bad);
      const conn = await inst.connect();
      const victim = (await conn.runAndReadAll(`select cell_id from results limit 1`))
        .getRowObjectsJS()[0].cell_id as string;
      await conn.run(`update results set correct = correct - 1 where cell_id = '${victim}'`);
      conn.closeSync();
      inst.closeSync();
      const before = await snapshot(`${dir}/merged.duckdb`, `${dir}/t3`);
      const refused = await deno(["run", "-A", MERGE, `${dir}/merged.duckdb`, bad], ROOT);
      assert.equal(refused.code, 2);
      assert.match(refused.err, new RegExp(`^error: .*cell ${victim} has different results`));
      assert.equal(refused.err.trim().split("\n").length, 1);
      assert.deepEqual(await snapshot(`${dir}/merged.duckdb`, `${dir}/t3`), before);

      // shards of different manifests are refused unless accepted
      const other = `${dir}/other.json`;
      await Deno.writeTextFile(other, JSON.stringify({ ...MANIFEST, batchSize: 25 }));
      const o = await deno(
        ["run", "-A", BENCH, other, "--shard", "0/3", "--db", `${dir}/other.duckdb`, "--quiet"],
        ROOT,
      );
      assert.equal(o.code, 0, o.err);
      const mix = await deno(
        ["run", "-A", MERGE, `${dir}/mix.duckdb`, shardFiles[1], `${dir}/other.duckdb`],
        ROOT,
      );
      assert.equal(mix.code, 2);
      assert.match(mix.err, /manifest .* differs .*--accept-mismatch/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Run a shell snippet with a stub `npx` that records its arguments; return them. */
async function stubRun(shell: string, script: string, env: Record<string, string>) {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/npx`,
      `#!/bin/sh\nfor a in "$@"; do printf '%s\\n' "$a"; done >> "${dir}/args"\necho >> "${dir}/args"\n`,
    );
    await Deno.chmod(`${dir}/npx`, 0o755);
    await Deno.writeTextFile(`${dir}/script`, script);
    const o = await new Deno.Command(shell, {
      args: [`${dir}/script`],
      cwd: dir,
      env: { ...env, PATH: `${dir}:${Deno.env.get("PATH")}`, VITQ_DIR: dir, SLURM_SUBMIT_DIR: dir },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
    return (await Deno.readTextFile(`${dir}/args`)).split("\n\n").map((c) => c.split("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function shardArg(calls: string[][]): string {
  const bench = calls.find((c) => c.includes("bench"))!;
  return bench[bench.indexOf("--shard") + 1];
}

Deno.test("templates: Slurm, Kubernetes and CI matrix parse and pass the shard vitq reads", async () => {
  const dep = `${ROOT}deploy`;
  // Slurm: shell syntax, and the array task's shard
  for (const f of ["slurm/bench-array.sbatch", "slurm/merge.sbatch", "slurm/submit.sh"]) {
    const o = await new Deno.Command("bash", { args: ["-n", `${dep}/${f}`] }).output();
    assert.equal(o.code, 0, `${f}: ${new TextDecoder().decode(o.stderr)}`);
  }
  const slurm = await stubRun("bash", await Deno.readTextFile(`${dep}/slurm/bench-array.sbatch`), {
    SLURM_ARRAY_TASK_ID: "5",
    SLURM_ARRAY_TASK_COUNT: "8",
  });
  assert.deepEqual(parseShard(shardArg(slurm)), { index: 5, count: 8 });
  const submit = await Deno.readTextFile(`${dep}/slurm/submit.sh`);
  assert.match(submit, /--array=0-\$\(\(SHARDS - 1\)\)/);
  assert.match(submit, /--dependency=afterany/);

  // Kubernetes Indexed Job: the pod's index and the completions count
  const job = parseYaml(await Deno.readTextFile(`${dep}/k8s/bench-indexed-job.yaml`));
  assert.equal(job.spec.completionMode, "Indexed");
  const c = job.spec.template.spec.containers[0];
  const env = Object.fromEntries(
    c.env.map((e: { name: string; value: string }) => [e.name, e.value]),
  );
  assert.equal(Number(env.SHARDS), job.spec.completions);
  const k8s = await stubRun("sh", c.args.join(" "), { ...env, JOB_COMPLETION_INDEX: "7" });
  assert.deepEqual(parseShard(shardArg(k8s)), { index: 7, count: job.spec.completions });
  const merge = parseYaml(await Deno.readTextFile(`${dep}/k8s/merge-job.yaml`));
  assert.match(merge.spec.template.spec.containers[0].args.join(" "), /task merge/);

  // CI matrix: every matrix entry's step passes its shard of the matrix size
  const wf = parseYaml(await Deno.readTextFile(`${dep}/github/paper-tables.yml`));
  const shards: number[] = wf.jobs.shard.strategy.matrix.shard;
  assert.equal(Number(wf.env.SHARDS), shards.length);
  const step = wf.jobs.shard.steps.find((s: { run?: string }) => s.run?.includes("--shard"));
  for (const s of shards) {
    const script = step.run.replaceAll("${{ matrix.shard }}", String(s)).replaceAll(
      "${{ inputs.manifest }}",
      "experiments/paper/w4a4.json",
    );
    const calls = await stubRun("bash", script, { SHARDS: String(wf.env.SHARDS) });
    assert.deepEqual(parseShard(shardArg(calls)), { index: s, count: shards.length });
  }
  assert.deepEqual(wf.jobs.merge.needs, "shard");
});
