// Headless Chromium + ComfyUI's frontend: load every example workflow and report what the frontend makes of it.
// node tests/browser_check.js <server url> <workflows dir> <screenshot dir>   (needs playwright-core on NODE_PATH)
// Prints one JSON object: {registered: bool, results: [{name, missing, widgetMismatches, linkMismatches, ...}]}.
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

async function main() {
  const [url, wfDir, shotDir] = process.argv.slice(2);
  fs.mkdirSync(shotDir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  await page.goto(url, { waitUntil: "load", timeout: 120000 });
  await page.waitForFunction(() => {
    const app = window.app ?? window.comfyAPI?.app?.app;
    return app && app.graph && window.LiteGraph && Object.keys(window.LiteGraph.registered_node_types).length > 50;
  }, null, { timeout: 120000 });
  // the first visit opens the template browser (our workflows are listed under Custom Nodes): close it
  await page.waitForTimeout(1000);
  await page.keyboard.press("Escape");
  await page.waitForTimeout(300);
  const out = { results: [] };
  const files = fs.readdirSync(wfDir).filter((f) => f.endsWith(".json")).sort();
  for (const f of files) {
    const wf = JSON.parse(fs.readFileSync(path.join(wfDir, f), "utf8"));
    const res = await page.evaluate(async (wf) => {
      const app = window.app ?? window.comfyAPI?.app?.app;
      const types = [...new Set(wf.nodes.map((n) => n.type))];
      const missing = types.filter((t) => !(t in window.LiteGraph.registered_node_types));
      await app.loadGraphData(structuredClone(wf), true, true, "core2-test");
      await new Promise((r) => setTimeout(r, 300));
      const g = app.graph;
      const widgetMismatches = [];
      const linkMismatches = [];
      for (const n of wf.nodes) {
        const node = g.getNodeById(n.id);
        if (!node) { widgetMismatches.push(`node ${n.id} ${n.type} not in graph`); continue; }
        const vals = (node.widgets || []).map((w) => w.value);
        const want = n.widgets_values || [];
        const same = vals.length === want.length && vals.every((v, i) => JSON.stringify(v) === JSON.stringify(want[i]));
        if (!same) widgetMismatches.push(`${n.id} ${n.type}: frontend ${JSON.stringify(vals).slice(0, 300)} vs file ${JSON.stringify(want).slice(0, 300)}`);
      }
      for (const [id, from, fslot, to, tslot, type] of wf.links) {
        const dst = g.getNodeById(to);
        const want = wf.nodes.find((n) => n.id === to).inputs[tslot].name;
        const inp = (dst.inputs || []).find((i) => i.link === id);
        if (!inp || inp.name !== want) linkMismatches.push(`link ${id} -> ${to}.${want}: frontend ${inp ? inp.name : "none"}`);
      }
      const dialogs = [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText.slice(0, 300));
      const prompt = await app.graphToPrompt();
      return { types, missing, widgetMismatches, linkMismatches, dialogs, apiNodes: Object.keys(prompt.output).length,
               graphNodes: g._nodes.length };
    }, wf);
    res.name = f;
    await page.screenshot({ path: path.join(shotDir, f.replace(/\.json$/, ".png")) });
    // close any dialog before the next workflow
    await page.keyboard.press("Escape");
    out.results.push(res);
  }
  out.consoleErrors = consoleErrors.slice(0, 20);
  await browser.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
