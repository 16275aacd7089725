/**
 * Open an HTML file in headless Chromium (Debian's `chromium`) over the DevTools
 * protocol: collect console errors, uncaught exceptions and any network request
 * that is not to a `file:`/`data:` URL, count the data marks of every chart
 * (`figure.chart` holding Vega SVGs) and take a full-page screenshot.
 *
 * `deno run -A tools/browser.ts REPORT.html [--screenshot out.png] [--until CSS] [--width 1280]`
 * prints the findings and exits 1 when a chart has no data marks or the page
 * logged an error.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

/** What the browser saw of one chart. */
export interface ChartCheck {
  id: string;
  /** SVG elements inside the figure. */
  svgs: number;
  /** Drawn data marks (children of Vega's `role-mark` groups outside axes, legends and titles). */
  marks: number;
  /** SVG `<title>` elements (hover texts of marks). */
  titles: number;
  /** Rendered width and height of the first SVG, CSS pixels. */
  width: number;
  height: number;
}

/** Findings of {@link inspectPage}. */
export interface PageCheck {
  title: string;
  charts: ChartCheck[];
  /** Console errors, uncaught exceptions and error log entries. */
  errors: string[];
  /** Requests to anything but file: and data: URLs (the report must open offline). */
  external: string[];
  /** Full-page PNG screenshot, when asked for. */
  png?: Uint8Array;
}

/** Path of the Chromium binary, or undefined when none is installed. */
export function findChromium(): string | undefined {
  const env = Deno.env.get("CHROMIUM");
  const candidates = [
    env,
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
  ];
  for (const c of candidates) {
    if (!c) continue;
    try {
      if (Deno.statSync(c).isFile) return c;
    } catch { /* not there */ }
  }
  return undefined;
}

/** A DevTools protocol connection to the browser; commands go to `session` once attached. */
class Cdp {
  private id = 0;
  /** Session of the attached page (flat mode), sent with every command when set. */
  session: string | undefined;
  private pending = new Map<number, { ok: (v: unknown) => void; err: (e: Error) => void }>();
  private listeners: ((method: string, params: Record<string, unknown>) => void)[] = [];
  private constructor(private ws: WebSocket) {
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data as string);
      if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) p?.err(new Error(`${msg.error.message} (${msg.error.code})`));
        else p?.ok(msg.result);
      } else for (const l of this.listeners) l(msg.method, msg.params ?? {});
    };
  }

  static connect(url: string): Promise<Cdp> {
    return new Promise((ok, err) => {
      const ws = new WebSocket(url);
      ws.onopen = () => ok(new Cdp(ws));
      ws.onerror = (e) => err(new Error(`cannot connect to ${url}: ${(e as ErrorEvent).message}`));
    });
  }

  send<T = Record<string, unknown>>(method: string, params: unknown = {}): Promise<T> {
    const id = ++this.id;
    return new Promise((ok, err) => {
      this.pending.set(id, { ok: ok as (v: unknown) => void, err });
      const msg = this.session === undefined
        ? { id, method, params }
        : { id, method, params, sessionId: this.session };
      this.ws.send(JSON.stringify(msg));
    });
  }

  on(fn: (method: string, params: Record<string, unknown>) => void): void {
    this.listeners.push(fn);
  }

  close(): Promise<void> {
    return new Promise((ok) => {
      if (this.ws.readyState === WebSocket.CLOSED) return ok();
      this.ws.onclose = () => ok();
      this.ws.close();
    });
  }
}

/** Runs in the page: the marks of every chart. */
const COUNT_MARKS = `JSON.stringify([...document.querySelectorAll("figure.chart")].map((f) => {
  const svgs = [...f.querySelectorAll("svg")];
  const skip = ".role-axis, .role-legend, .role-title, .role-column-header, .role-row-header";
  let marks = 0;
  for (const g of f.querySelectorAll("g.role-mark")) {
    if (g.closest(skip)) continue;
    for (const c of g.children) {
      const b = c.getBBox ? c.getBBox() : { width: 1, height: 1 };
      if (b.width > 0 || b.height > 0) marks++;
    }
  }
  const r = svgs[0] ? svgs[0].getBoundingClientRect() : { width: 0, height: 0 };
  const titles = f.querySelectorAll("svg title").length;
  return { id: f.dataset.chart || "", svgs: svgs.length, marks, titles, width: r.width, height: r.height };
}))`;

/**
 * Open `file` in headless Chromium and inspect it (see {@link PageCheck}).
 *
 * @param file path of an HTML file
 * @param opts `width` of the viewport (CSS px), `screenshot` to capture the page (down to
 *   the top of the first element matching the CSS selector `until` when given, else
 *   all of it), `timeoutMs` for the whole inspection
 */
export async function inspectPage(
  file: string,
  opts: { width?: number; screenshot?: boolean; until?: string; timeoutMs?: number } = {},
): Promise<PageCheck> {
  const bin = findChromium();
  if (!bin) {
    throw new Error("chromium not found (apt-get install chromium, or set CHROMIUM=/path)");
  }
  const width = opts.width ?? 1280;
  const profile = await Deno.makeTempDir({ prefix: "vitq-chromium-" });
  const child = new Deno.Command(bin, {
    args: [
      "--headless=new",
      "--disable-gpu",
      "--no-sandbox",
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-extensions",
      "--disable-background-networking",
      "--disable-dev-shm-usage",
      "--hide-scrollbars",
      "--remote-debugging-port=0",
      `--user-data-dir=${profile}`,
      `--window-size=${width},900`,
      "about:blank",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const timeout = opts.timeoutMs ?? 45_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, err) => {
    timer = setTimeout(() => err(new Error(`chromium: no result within ${timeout} ms`)), timeout);
  });
  let cdp: Cdp | undefined;
  try {
    return await Promise.race([
      deadline,
      (async () => {
        // the DevTools endpoint is announced on stderr
        const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "", wsUrl: string | undefined;
        while (!wsUrl) {
          const { value, done } = await reader.read();
          if (done) throw new Error(`chromium exited before DevTools started: ${buf.slice(-500)}`);
          buf += value;
          wsUrl = buf.match(/DevTools listening on (ws:\/\/\S+)/)?.[1];
        }
        // keep draining stderr so chromium never blocks on a full pipe
        (async () => {
          try {
            while (!(await reader.read()).done) { /* drain */ }
          } catch { /* closed */ }
        })();
        // the browser endpoint only (no HTTP request), never through a proxy: Deno's
        // WebSocket honours HTTP_PROXY, so the loopback address joins NO_PROXY
        for (const k of ["NO_PROXY", "no_proxy"]) {
          const v = Deno.env.get(k);
          if (!v?.split(",").includes("127.0.0.1")) {
            Deno.env.set(k, [v, "127.0.0.1", "localhost"].filter(Boolean).join(","));
          }
        }
        // find or open a page and attach to it in flat mode
        cdp = await Cdp.connect(wsUrl);
        const { targetInfos } = await cdp.send<
          { targetInfos: { type: string; targetId: string }[] }
        >(
          "Target.getTargets",
        );
        const targetId = targetInfos.find((t) => t.type === "page")?.targetId ??
          (await cdp.send<{ targetId: string }>("Target.createTarget", { url: "about:blank" }))
            .targetId;
        cdp.session = (await cdp.send<{ sessionId: string }>("Target.attachToTarget", {
          targetId,
          flatten: true,
        })).sessionId;
        const errors: string[] = [], external: string[] = [];
        let loaded: () => void;
        const load = new Promise<void>((ok) => (loaded = ok));
        cdp.on((method, p) => {
          if (method === "Page.loadEventFired") loaded();
          else if (
            method === "Runtime.consoleAPICalled" && ["error", "assert"].includes(p.type as string)
          ) {
            const args = (p.args as { value?: unknown; description?: string }[]) ?? [];
            errors.push(
              `console.${p.type}: ${args.map((a) => a.value ?? a.description).join(" ")}`,
            );
          } else if (method === "Runtime.exceptionThrown") {
            const d = p.exceptionDetails as { text: string; exception?: { description?: string } };
            errors.push(`exception: ${d.exception?.description ?? d.text}`);
          } else if (method === "Log.entryAdded") {
            const e = p.entry as { level: string; text: string; url?: string };
            if (e.level === "error") errors.push(`log: ${e.text}${e.url ? ` (${e.url})` : ""}`);
          } else if (method === "Network.requestWillBeSent") {
            const url = (p.request as { url: string }).url;
            if (!/^(file|data|about):/.test(url)) external.push(url);
          }
        });
        await cdp.send("Page.enable");
        await cdp.send("Runtime.enable");
        await cdp.send("Log.enable");
        await cdp.send("Network.enable");
        await cdp.send("Emulation.setDeviceMetricsOverride", {
          width,
          height: 900,
          deviceScaleFactor: 1,
          mobile: false,
        });
        await cdp.send("Page.navigate", { url: pathToFileURL(resolve(file)).href });
        await load;
        const title = (await cdp.send<{ result: { value: string } }>("Runtime.evaluate", {
          expression: "document.title",
          returnByValue: true,
        })).result.value;
        const res = await cdp.send<{ result: { value: string } }>("Runtime.evaluate", {
          expression: COUNT_MARKS,
          returnByValue: true,
        });
        const charts = JSON.parse(res.result.value) as ChartCheck[];
        let png: Uint8Array | undefined;
        if (opts.screenshot) {
          const m = await cdp.send<{ cssContentSize: { width: number; height: number } }>(
            "Page.getLayoutMetrics",
          );
          let h = Math.ceil(m.cssContentSize.height);
          if (opts.until) {
            const top = (await cdp.send<{ result: { value: number | null } }>("Runtime.evaluate", {
              expression: `(() => { const e = document.querySelector(${
                JSON.stringify(opts.until)
              }); return e ? e.getBoundingClientRect().top + window.scrollY : null; })()`,
              returnByValue: true,
            })).result.value;
            if (typeof top === "number" && top > 0) h = Math.min(h, Math.ceil(top));
          }
          const shot = await cdp.send<{ data: string }>("Page.captureScreenshot", {
            format: "png",
            captureBeyondViewport: true,
            clip: { x: 0, y: 0, width, height: h, scale: 1 },
          });
          png = Uint8Array.from(atob(shot.data), (c) => c.charCodeAt(0));
        }
        return { title, charts, errors, external, png };
      })(),
    ]);
  } finally {
    clearTimeout(timer);
    await cdp?.close().catch(() => {});
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      screenshot: { type: "string" },
      until: { type: "string" },
      width: { type: "string", default: "1280" },
    },
  });
  if (positionals.length !== 1) {
    console.error(
      "error: usage: deno run -A tools/browser.ts REPORT.html [--screenshot out.png] [--until CSS] [--width 1280]",
    );
    Deno.exit(2);
  }
  const r = await inspectPage(positionals[0], {
    width: Number(values.width),
    screenshot: values.screenshot !== undefined,
    until: values.until,
  });
  for (const c of r.charts) {
    console.log(
      `chart ${c.id}: ${c.svgs} svg, ${c.marks} data marks, ${c.titles} hover texts, ${c.width}x${c.height}`,
    );
  }
  for (const e of [...r.errors, ...r.external.map((u) => `external request: ${u}`)]) {
    console.log(e);
  }
  if (values.screenshot && r.png) {
    await Deno.writeFile(values.screenshot, r.png);
    console.log(`screenshot: ${values.screenshot}`);
  }
  const bad = r.charts.length === 0 || r.charts.some((c) => c.marks === 0) ||
    r.errors.length > 0 || r.external.length > 0;
  Deno.exit(bad ? 1 : 0);
}
