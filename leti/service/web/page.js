"use strict";
// The page's only script: GET socs, then one POST predict per chosen SoC, drawn as a card with
// the total, its interval, provenance, notes and a per-kernel bar chart; a side-by-side table
// for several SoCs; JSON and CSV downloads of what was shown. URLs are relative to the page.
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("form"), fileInput = $("model"), drop = $("drop"), dropText = $("drop-text");
  const runtimeSel = $("runtime"), socList = $("soc-list"), shapeInput = $("input-shape");
  const statusEl = $("status"), results = $("results"), cards = $("cards"), order = $("order");
  let socs = [], file = null, answer = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }
  const ms = (x) => (x >= 100 ? x.toFixed(1) : x >= 1 ? x.toFixed(2) : x.toFixed(4));
  function say(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!isError);
    statusEl.setAttribute("role", isError ? "alert" : "status");
  }
  // The API's own words: {"error": kind, "detail": ...}; a non-JSON answer by its status.
  async function apiError(resp) {
    let doc = null;
    try { doc = await resp.json(); } catch (e) { /* not JSON */ }
    if (doc && doc.detail) return { error: doc.error || "error", detail: doc.detail };
    return { error: "http_" + resp.status, detail: `${resp.status} ${resp.statusText}` };
  }

  // ------------------------------------------------------------------ SoCs and runtimes
  async function loadSocs() {
    const resp = await fetch("socs", { headers: { Accept: "application/json" } });
    if (!resp.ok) { const e = await apiError(resp); throw new Error(e.detail); }
    const doc = await resp.json();
    socs = doc.socs;
    runtimeSel.replaceChildren(...doc.runtimes.map((r) => el("option", { value: r, text: r })));
    runtimeSel.value = doc.runtimes.includes("tflite-gpu") ? "tflite-gpu" : doc.runtimes[0];
    drawSocs();
  }
  function drawSocs() {
    const rt = runtimeSel.value;
    const checked = new Set(chosenSocs());
    socList.replaceChildren(...socs.map((s) => {
      const model = s.runtimes[rt];
      const box = el("input", { type: "checkbox", name: "soc", value: s.id, id: "soc-" + s.id });
      box.checked = checked.has(s.id);
      const how = model ? model.provenance : "no model for " + rt;
      return el("label", { class: model ? "soc" : "soc none", for: box.id }, box,
        el("span", { class: "soc-name", text: s.name }),
        el("span", { class: "help", text: ` ${s.gpu} · ${how}` }));
    }));
  }
  const chosenSocs = () =>
    [...socList.querySelectorAll("input[name=soc]:checked")].map((b) => b.value);
  runtimeSel.addEventListener("change", drawSocs);

  // ------------------------------------------------------------------ the file
  function setFile(f) {
    file = f || null;
    dropText.textContent = file ? `${file.name} (${(file.size / 1024).toFixed(1)} KiB)`
      : "Drop an ONNX model or an ncnn .param here, or choose a file";
    drop.classList.toggle("chosen", !!file);
  }
  fileInput.addEventListener("change", () => setFile(fileInput.files[0]));
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
  });

  // ------------------------------------------------------------------ predicting
  async function predictOne(soc, runtime, shape) {
    const body = new FormData();
    body.append("model", file, file.name);
    body.append("soc", soc);
    body.append("runtime", runtime);
    if (shape) body.append("input_shape", shape);
    try {
      const resp = await fetch("predict", { method: "POST", body });
      if (!resp.ok) return { soc, runtime, ...(await apiError(resp)) };
      return { soc, runtime, prediction: await resp.json() };
    } catch (e) {
      return { soc, runtime, error: "network_error", detail: String(e.message || e) };
    }
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const chosen = chosenSocs(), runtime = runtimeSel.value, shape = shapeInput.value.trim();
    if (!file) return say("Choose a model file first.", true);
    if (!chosen.length) return say("Pick at least one SoC.", true);
    $("submit").disabled = true;
    say(`Estimating ${file.name} on ${chosen.length} SoC(s)…`);
    const rows = await Promise.all(chosen.map((s) => predictOne(s, runtime, shape)));
    $("submit").disabled = false;
    answer = { model: file.name, runtime, input_shape: shape || null, results: rows };
    draw();
    const bad = rows.filter((r) => r.error);
    if (bad.length === rows.length) say(bad.map((r) => `${r.soc}: ${r.detail}`).join(" · "), true);
    else say(bad.length ? `Done; ${bad.length} SoC(s) gave an error (see below).` : "Done.");
  });

  // ------------------------------------------------------------------ drawing
  const socName = (id) => (socs.find((s) => s.id === id) || { name: id }).name;
  function draw() {
    results.hidden = false;
    $("download-json").disabled = $("download-csv").disabled = false;
    drawCompare();
    cards.replaceChildren(...answer.results.map(card));
  }
  function drawCompare() {
    const ok = answer.results.filter((r) => r.prediction);
    $("compare-wrap").hidden = answer.results.length < 2;
    const fastest = Math.min(...ok.map((r) => r.prediction.total_ms));
    $("compare").tBodies[0].replaceChildren(...answer.results.map((r) => {
      const p = r.prediction;
      if (!p) {
        return el("tr", { class: "error" }, el("th", { scope: "row", text: socName(r.soc) }),
          el("td", { text: r.runtime }), el("td", { colspan: "5", text: r.detail }));
      }
      return el("tr", {}, el("th", { scope: "row", text: socName(r.soc) }),
        el("td", { text: p.runtime }), el("td", { class: "num", text: ms(p.total_ms) }),
        el("td", { class: "num", text: `${ms(p.interval_ms[0])} – ${ms(p.interval_ms[1])}` }),
        el("td", { class: "num", text: ms(p.kernel_sum_ms) }),
        el("td", { class: "num", text: `×${(p.total_ms / fastest).toFixed(2)}` }),
        el("td", { text: p.provenance }));
    }));
  }
  function card(r) {
    const head = el("h2", { text: socName(r.soc) }, el("span", { class: "help", text: ` ${r.soc} · ${r.runtime}` }));
    const box = el("article", { class: "card", "data-soc": r.soc, "aria-label": `Result on ${socName(r.soc)}` }, head);
    if (!r.prediction) {
      box.classList.add("failed");
      box.append(el("p", { class: "api-error", role: "alert" },
        el("strong", { text: r.error }), `: ${r.detail}`));
      return box;
    }
    const p = r.prediction;
    box.append(
      el("p", { class: "total" },
        el("span", { class: "total-ms", text: ms(p.total_ms) }), " ms ",
        el("span", { class: "interval", text: `interval ${ms(p.interval_ms[0])} – ${ms(p.interval_ms[1])} ms` })),
      el("p", { class: "help" }, "provenance ", el("strong", { class: "provenance", text: p.provenance }),
        ` · kernel sum ${ms(p.kernel_sum_ms)} ms · model ${p.model_version}`));
    if (p.notes.length) {
      box.append(el("ul", { class: "notes", "aria-label": "Notes" },
        ...p.notes.map((n) => el("li", { text: n }))));
    }
    if (p.unsupported.length) {
      box.append(el("p", { class: "api-error" }, "unsupported ops: " +
        p.unsupported.map((u) => `${u.op} ×${u.count}`).join(", ")));
    }
    box.append(bars(p, socName(r.soc)));
    return box;
  }
  function bars(p, name) {
    const layers = (p.layers || []).slice();
    if (order.value === "time") layers.sort((a, b) => b.ms - a.ms);
    const top = Math.max(...layers.map((l) => l.ms), 1e-9);
    return el("ol", { class: "bars", "aria-label": `Time per kernel on ${name}` },
      ...layers.map((l) => {
        const bar = el("span", { class: "bar " + l.priced, title: `${l.ms} ms, priced: ${l.priced}` });
        bar.style.width = `${Math.max(0.5, (100 * l.ms) / top)}%`;
        const label = l.kernel === "graph" ? l.name : `${l.name} · ${l.kernel}`;
        return el("li", { class: "bar-row" },
          el("span", { class: "bar-label", title: `${l.op} (${l.kernel})`, text: label }),
          el("span", { class: "bar-track" }, bar),
          el("span", { class: "bar-ms", text: ms(l.ms) }));
      }));
  }
  order.addEventListener("change", () => answer && draw());

  // ------------------------------------------------------------------ downloads
  function save(text, type, name) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  const stem = () => answer.model.replace(/\.[^.]+$/, "") || "model";
  $("download-json").addEventListener("click", () =>
    save(JSON.stringify(answer, null, 2), "application/json", `leti-${stem()}.json`));
  function csvCell(v) {
    const s = v == null ? "" : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }
  function toCsv() {
    const head = ["soc", "runtime", "row", "name", "op", "kernel", "priced", "ms",
      "interval_low_ms", "interval_high_ms", "provenance", "model_version", "error"];
    const out = [head];
    for (const r of answer.results) {
      const p = r.prediction;
      if (!p) { out.push([r.soc, r.runtime, "error", "", "", "", "", "", "", "", "", "", r.detail]); continue; }
      out.push([p.soc, p.runtime, "total", "(total)", "", "", "", p.total_ms, p.interval_ms[0],
        p.interval_ms[1], p.provenance, p.model_version, ""]);
      (p.layers || []).forEach((l, i) => out.push([p.soc, p.runtime, i, l.name, l.op, l.kernel,
        l.priced, l.ms, "", "", p.provenance, p.model_version, ""]));
    }
    return out.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
  }
  $("download-csv").addEventListener("click", () => save(toCsv(), "text/csv", `leti-${stem()}.csv`));

  loadSocs().catch((e) => say("Could not list the SoCs: " + e.message, true));
})();
