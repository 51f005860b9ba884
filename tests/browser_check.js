// Headless Chromium + ComfyUI's own frontend, used as a user would: read this pack's entries in the template browser,
// open every example workflow, then run some of them with the Run button and read what the nodes show.
//
//   node tests/browser_check.js <server url> <workflows dir> <screenshot dir> <pack folder> [workflow to run ...]
//
// Needs playwright-core on NODE_PATH and Chromium ($CHROMIUM, default /usr/bin/chromium). Prints one JSON object:
//   templates: {names, cards: [{name, text, title, thumbnail}]}   the pack's cards in the order the browser shows them
//   results:   [{name, missing, widgetMismatches, linkMismatches, dialogs, missingModels, apiNodes, graphNodes}]
//              one per workflow; dialogs: the texts of the dialogs (1.32) or error overlays (1.49) that opened with it;
//              missingModels: [{file, folder, download}] the 1.49 Errors panel lists, null where no overlay opened
//   runs:      [{name, seconds, errors, dialogs, texts: {id: {type, text}}, outputs: {id: {type, images, text}}}]
//   consoleErrors
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

// Without the networking flags Chromium's own background connections fail (and stall) on a closed network.
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const TEXT_WIDGET = "$$node-text-preview"; // where the frontend puts a node's progress text
const RUN_TIMEOUT_MS = 300000;
const SHOT_VIEWPORT = { width: 2600, height: 1200 };


async function openApp(page, url) {
  await page.goto(url, { waitUntil: "load", timeout: 120000 });
  await page.waitForFunction(() => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    return app && app.graph && window.LiteGraph && Object.keys(window.LiteGraph.registered_node_types).length > 50;
  }, null, { timeout: 120000 });
  await page.evaluate(() => {
    // what the server says while a workflow runs (the Run button path), kept for runWorkflow()
    const api = window.comfyAPI.api.api;
    const log = (window.__core2 = { events: [] });
    for (const t of ["execution_start", "execution_success", "execution_error", "execution_interrupted", "executed"]) {
      api.addEventListener(t, (e) => log.events.push({ type: t, detail: e.detail }));
    }
  });
}

// The template browser: frontend 1.32 shows it as a PrimeVue dialog (.workflow-template-selector-dialog) with a close
// button (i.pi-times); 1.49 as a [role=dialog] labelled by the dialog's key, with a "Close dialog" button, and the
// custom-node packs under its EXTENSIONS section. Both list a pack as a [role=button] entry named after it. (1.32's
// .workflow-template-selector-dialog sits inside a [role=dialog] with that same label, so the first selector found
// wins.)
const TEMPLATE_DIALOGS = [".workflow-template-selector-dialog", "[role=dialog][aria-labelledby=global-workflow-template-selector]"];
const TEMPLATE_DIALOG_CLOSE = 'button:has(i.pi-times), button[aria-label="Close dialog"]';

async function readTemplates(page, pack) {
  // a fresh user sees the template browser on the first visit; otherwise open it from the sidebar
  const any = page.locator(TEMPLATE_DIALOGS.join(", ")).first();
  await any.waitFor({ timeout: 5000 }).catch(() => {});
  if (!(await any.count())) await page.locator("button[aria-label=Templates]").click();
  await any.waitFor({ timeout: 30000 });
  let dialog = null;
  for (const sel of TEMPLATE_DIALOGS) if (!dialog && (await page.locator(sel).count())) dialog = page.locator(sel);
  if ((await dialog.count()) !== 1) throw new Error(`${await dialog.count()} template dialogs open`);
  await dialog.locator("[role=button]", { hasText: new RegExp(`^\\s*${pack}\\s*$`) }).click();
  const cards = dialog.locator('[data-testid^="template-workflow-"]');
  await cards.first().waitFor({ timeout: 30000 });
  const out = { names: [], cards: [] };
  for (let i = 0; i < (await cards.count()); i++) {
    const card = cards.nth(i);
    await card.scrollIntoViewIfNeeded();
    // the frontend fetches a thumbnail, then sets an img's src (and may re-render the img): poll for a loaded picture
    let thumbnail = null;
    for (const end = Date.now() + 15000; !thumbnail && Date.now() < end; await page.waitForTimeout(200)) {
      thumbnail = await card.evaluate((el) => [...el.querySelectorAll("img")]
        .filter((i) => i.complete && i.naturalWidth > 0).map((i) => `${i.naturalWidth}x${i.naturalHeight}`)[0] ?? null);
    }
    const name = (await card.getAttribute("data-testid")).replace("template-workflow-", "");
    // the card's title is its heading (1.49 puts a "Node graph" badge above it, so the card's text no longer starts
    // with the title)
    const headings = await card.locator("h1, h2, h3, h4").allInnerTexts();
    out.names.push(name);
    out.cards.push({ name, text: (await card.innerText()).trim(), title: headings.map((h) => h.trim()), thumbnail });
  }
  await dialog.locator(TEMPLATE_DIALOG_CLOSE).first().click();
  await dialog.waitFor({ state: "detached", timeout: 10000 }).catch(() => {});
  return out;
}

// Frontend 1.49 tells about a workflow's problems (missing models among them) in an error overlay instead of a dialog;
// its "View details" opens the Errors tab of the properties panel, which lists each missing model file with its
// model folder and, where the workflow names a URL for it, a Download button.
const ERROR_OVERLAY = "[data-testid=error-overlay]";
const PANEL_OPEN = 'button[aria-label="Toggle properties panel"][aria-pressed=true]';

async function readErrorOverlays(page) {
  // -> {texts: one per overlay: its text and the panel's, models: [{file, folder, download}] the panel lists as missing}
  const out = { texts: [], models: [] };
  const overlays = page.locator(ERROR_OVERLAY);
  for (let i = 0; i < (await overlays.count()); i++) {
    const overlay = overlays.nth(i);
    let text = (await overlay.innerText()).trim();
    const details = overlay.locator("[data-testid=error-overlay-see-errors]");
    if (await details.count()) {
      await details.first().click();
      const panel = page.locator("[data-testid=properties-panel]");
      await panel.locator('[data-testid^="error-group-"]').first().waitFor({ timeout: 10000 });
      await page.waitForTimeout(300);
      // a missing model's row: its file name (the element with a title, no aria-label), the folder under it, and a
      // Download button where the workflow names a URL for the file
      const models = await panel.evaluate((p) => [...p.querySelectorAll("[data-testid=error-group-missing-model] [title]")]
        .filter((e) => !e.hasAttribute("aria-label")).map((e) => {
          const col = e.parentElement.parentElement;
          return { file: e.title, folder: col.lastElementChild.innerText.trim(),
                   download: !!col.parentElement.querySelector("[data-testid=missing-model-download]") };
        }));
      out.models.push(...models);
      // the panel's text, then one "<folder> / <file>" line (as 1.32's dialog writes them) for every file it offers
      // to download
      text += "\n" + (await panel.innerText()).trim() + "\n"
        + models.filter((m) => m.download).map((m) => `${m.folder} / ${m.file}`).join("\n");
    }
    out.texts.push(text.slice(0, 3000));
  }
  return out;
}

async function closeDialogs(page) {
  for (let i = 0; i < 3 && (await page.locator(".p-dialog").count()); i++) {
    await page.keyboard.press("Escape");
    await page.waitForTimeout(200);
  }
  // 1.49: the error overlay and the properties panel it opened
  for (let i = 0; i < 3 && (await page.locator(ERROR_OVERLAY).count()); i++) {
    await page.locator("[data-testid=error-overlay-dismiss]").first().click();
    await page.waitForTimeout(200);
  }
  for (let i = 0; i < 3 && (await page.locator(PANEL_OPEN).count()); i++) {
    await page.locator(PANEL_OPEN).first().click();
    await page.waitForTimeout(200);
  }
}

async function openWorkflow(page, wf, name) {
  const res = await page.evaluate(async ({ wf, name }) => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    const types = [...new Set(wf.nodes.map((n) => n.type))];
    const missing = types.filter((t) => !(t in window.LiteGraph.registered_node_types));
    await app.loadGraphData(structuredClone(wf), true, true, name);
    await new Promise((r) => setTimeout(r, 500)); // the missing-models dialog opens after the graph
    const g = app.graph;
    const widgetMismatches = [];
    const linkMismatches = [];
    for (const n of wf.nodes) {
      const node = g.getNodeById(n.id);
      if (!node) { widgetMismatches.push(`node ${n.id} ${n.type} not in graph`); continue; }
      const vals = (node.widgets || []).filter((w) => !w.name?.startsWith("$$")).map((w) => w.value);
      const want = n.widgets_values || [];
      const same = vals.length === want.length && vals.every((v, i) => JSON.stringify(v) === JSON.stringify(want[i]));
      if (!same) widgetMismatches.push(`${n.id} ${n.type}: frontend ${JSON.stringify(vals).slice(0, 300)} vs file ${JSON.stringify(want).slice(0, 300)}`);
    }
    for (const [id, , , to, tslot] of wf.links) {
      const want = wf.nodes.find((n) => n.id === to).inputs[tslot].name;
      const inp = (g.getNodeById(to).inputs || []).find((i) => i.link === id);
      if (!inp || inp.name !== want) linkMismatches.push(`link ${id} -> ${to}.${want}: frontend ${inp ? inp.name : "none"}`);
    }
    return { types, missing, widgetMismatches, linkMismatches, graphNodes: g._nodes.length };
  }, { wf, name });
  // the missing-models dialog (1.32) or the error overlay (1.49): give it 3 s in all to open
  await page.locator(`.p-dialog, ${ERROR_OVERLAY}`).first().waitFor({ timeout: 2500 }).catch(() => {});
  await page.waitForTimeout(300);
  res.dialogs = await page.evaluate(() => [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText.slice(0, 1000)));
  const overlays = await readErrorOverlays(page);
  res.dialogs.push(...overlays.texts);
  res.missingModels = overlays.texts.length ? overlays.models : null; // null: no 1.49 error overlay
  res.apiNodes = await page.evaluate(async () => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    return Object.keys((await app.graphToPrompt()).output).length;
  });
  res.name = name;
  return res;
}

async function fitView(page) {
  await page.evaluate(() => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    app.canvas.deselectAll?.();
    app.canvas.fitViewToSelectionAnimated({ duration: 1 }); // with nothing selected: the whole graph
  });
  await page.waitForTimeout(800);
}

async function tidyForScreenshots(page) {
  // what a user would close first: the "Introducing Nodes 2.0" banner and the minimap over the canvas
  await page.evaluate(() => {
    const banner = [...document.querySelectorAll("div")].find((d) => d.children.length
      && d.innerText.startsWith("Introducing Nodes 2.0") && d.querySelectorAll("button").length >= 2);
    [...(banner?.querySelectorAll("button") ?? [])].pop()?.click();
  });
  const minimap = page.locator('button[aria-label^="Hide Minimap"]');
  if (await minimap.count()) await minimap.first().click();
  await page.waitForTimeout(300);
}

async function screenshotRun(page, file) {
  // a large window, so that the whole graph fits at a zoom where LiteGraph still draws titles, widgets and texts
  const normal = page.viewportSize();
  await page.setViewportSize(SHOT_VIEWPORT);
  await page.waitForTimeout(500);
  await fitView(page);
  const clip = await page.evaluate(() => { // the graph's nodes on the screen, with a margin
    const app = window.app ?? window.comfyAPI?.app?.app;
    const box = app.canvas.canvas.getBoundingClientRect();
    const pts = app.graph._nodes.flatMap((n) => {
      const [x, y, w, h] = n.boundingRect;
      return [app.canvas.ds.convertOffsetToCanvas([x, y]), app.canvas.ds.convertOffsetToCanvas([x + w, y + h])];
    });
    const x0 = Math.max(0, box.left + Math.min(...pts.map((p) => p[0])) - 24);
    const y0 = Math.max(0, box.top + Math.min(...pts.map((p) => p[1])) - 24);
    const x1 = Math.min(innerWidth, box.left + Math.max(...pts.map((p) => p[0])) + 24);
    const y1 = Math.min(innerHeight, box.top + Math.max(...pts.map((p) => p[1])) + 24);
    return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  });
  await page.screenshot({ path: file, clip });
  await page.setViewportSize(normal);
}

async function setWidgets(page, overrides) {
  // widget values by node type ({type: {widget: value}}): the test runs the toy chains with smaller budgets
  const missing = await page.evaluate((overrides) => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    const missing = [];
    for (const node of app.graph._nodes) {
      for (const [name, value] of Object.entries(overrides[node.type] || {})) {
        const w = (node.widgets || []).find((x) => x.name === name);
        if (w) w.value = value; else missing.push(`${node.type}.${name}`);
      }
    }
    app.graph.setDirtyCanvas(true, true);
    return missing;
  }, overrides);
  if (missing.length) throw new Error(`no such widgets: ${missing.join(", ")}`);
}

async function runWorkflow(page, name) {
  await page.evaluate(() => { window.__core2.events = []; });
  const started = Date.now();
  // the Run button; 1.49 also names the menu beside it (run modes) "Run", a button that opens a menu
  await page.getByRole("button", { name: "Run", exact: true }).and(page.locator("button:not([aria-haspopup])")).click();
  // done: the server said how the prompt ended and its queue is empty
  for (let done = false; !done; await page.waitForTimeout(1000)) {
    if (Date.now() - started > RUN_TIMEOUT_MS) throw new Error(`${name}: still running after ${RUN_TIMEOUT_MS / 1000} s`);
    done = await page.evaluate(async () => {
      const ended = window.__core2.events.some((e) => !["executed", "execution_start"].includes(e.type));
      const q = ended && (await window.comfyAPI.api.api.getQueue());
      return ended && q.Running.length === 0 && q.Pending.length === 0;
    });
  }
  await page.waitForTimeout(1000); // the last images and texts land on the nodes
  const run = await page.evaluate((TEXT_WIDGET) => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    const ev = window.__core2.events;
    const errors = ev.filter((e) => e.type === "execution_error" || e.type === "execution_interrupted")
      .map((e) => JSON.stringify(e.detail).slice(0, 2000));
    const texts = {};
    const outputs = {};
    for (const node of app.graph._nodes) {
      const w = (node.widgets || []).find((x) => x.name === TEXT_WIDGET);
      if (w && w.value) texts[node.id] = { type: node.type, text: String(w.value) };
    }
    for (const e of ev.filter((x) => x.type === "executed")) {
      const node = app.graph.getNodeById(e.detail.display_node ?? e.detail.node);
      outputs[e.detail.node] = { type: node?.type, images: (e.detail.output?.images || []).length,
                                 text: e.detail.output?.text ?? null, shown: (node?.imgs || []).length };
    }
    return { errors, texts, outputs, success: ev.some((e) => e.type === "execution_success"),
             events: ev.map((e) => e.type) };
  }, TEXT_WIDGET);
  run.name = name;
  run.seconds = (Date.now() - started) / 1000;
  return run;
}

async function main() {
  const [url, wfDir, shotDir, pack, ...toRun] = process.argv.slice(2);
  fs.mkdirSync(shotDir, { recursive: true });
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
                                          args: CHROMIUM_ARGS });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const consoleErrors = [];
  const notFound = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${m.location().url}: ${m.text().slice(0, 300)}`); });
  page.on("pageerror", (e) => consoleErrors.push(`uncaught: ${String(e.stack || e).slice(0, 500)}`));
  page.on("response", (r) => { if (r.status() === 404) notFound.push(r.url()); });
  await openApp(page, url);
  const out = { templates: await readTemplates(page, pack), results: [], runs: [] };
  await closeDialogs(page);
  const files = fs.readdirSync(wfDir).filter((f) => f.endsWith(".json")).sort();
  for (const f of files) {
    const wf = JSON.parse(fs.readFileSync(path.join(wfDir, f), "utf8"));
    const res = await openWorkflow(page, wf, f);
    await page.screenshot({ path: path.join(shotDir, f.replace(/\.json$/, ".png")) });
    await closeDialogs(page);
    out.results.push(res);
  }
  await tidyForScreenshots(page);
  for (const name of toRun) {
    const wf = JSON.parse(fs.readFileSync(path.join(wfDir, name), "utf8"));
    const opened = await openWorkflow(page, wf, name);
    await closeDialogs(page);
    await setWidgets(page, JSON.parse(process.env.CORE2_WIDGETS || "{}"));
    const run = await runWorkflow(page, name);
    run.dialogs = opened.dialogs; // what opening it said, this time after the runs before it
    run.screenshot = path.join(shotDir, "run " + name.replace(/\.json$/, ".png"));
    await screenshotRun(page, run.screenshot);
    out.runs.push(run);
  }
  out.consoleErrors = consoleErrors;
  out.notFound = notFound;
  await browser.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
