// sinklens explorer: draws the inlined data; no network, no libraries.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("sinklens-data").textContent);
  const L = D.n_layers, H = D.n_heads, T = D.prompt_length, NV = D.visual_keys.length;
  const S = D.heads_stored === "all" ? H + 1 : 1;
  const SVGNS = "http://www.w3.org/2000/svg";

  function bytes(b64) {
    const raw = atob(b64), out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function floats(b64) { return new Float32Array(bytes(b64).buffer); }

  const views = {};
  for (const name of Object.keys(D.views)) {
    const v = D.views[name];
    views[name] = {
      raw: v, Q: v.queries.length, NT: v.text_keys.length,
      imageCodes: bytes(v.image_attn), imageScale: floats(v.image_scale),
      textCodes: bytes(v.text_attn), textScale: floats(v.text_scale),
      mass: floats(v.image_mass), ratio: floats(v.ratio), phi: floats(v.phi), sinks: bytes(v.sinks),
      edited: v.edited ? bytes(v.edited) : null,
      ratioBefore: v.ratio_before_edit ? floats(v.ratio_before_edit) : null,
    };
  }
  const isVisual = new Uint8Array(T);
  D.visual_keys.forEach((p) => { isVisual[p] = 1; });

  const state = { view: "base", q: 0, layer: 0, head: H, renders: 0 };  // head H = the layer mean
  const $ = (id) => document.getElementById(id);

  // --- values -------------------------------------------------------------------------------------
  function slot() { return D.heads_stored === "all" ? state.head : 0; }
  function imageRow(v, q, l, s) {
    const row = (q * L + l) * S + s, scale = v.imageScale[row], out = new Float32Array(NV);
    for (let k = 0; k < NV; k++) out[k] = v.imageCodes[row * NV + k] * scale;
    return out;
  }
  function textRow(v, q, l, s) {
    const row = (q * L + l) * S + s, scale = v.textScale[row], out = new Float32Array(v.NT);
    for (let k = 0; k < v.NT; k++) out[k] = v.textCodes[row * v.NT + k] * scale;
    return out;
  }
  function perHead(arr, q, l, h) { return arr[(q * L + l) * (H + 1) + h]; }
  function label(p) { return D.kinds[p] === "newline" ? "↵" : D.tokens[p]; }  // an image-newline token
  function isSink(v, l, p) { return p < T && v.sinks[l * T + p] === 1; }
  function phiOf(v, l, p) { return p < T ? v.phi[l * T + p] : NaN; }
  function fmt(x, d) { return Number.isFinite(x) ? x.toFixed(d === undefined ? 3 : d) : "n/a"; }
  function centric(r, s) { return Number.isFinite(r) && r >= D.params.rho && s >= D.params.summ; }

  // --- building -----------------------------------------------------------------------------------
  const cellsByKey = new Array(NV);
  function buildImages() {
    const box = $("images");
    D.images.forEach((image) => {
      image.tiles.forEach((tile) => {
        const cell = Math.max(6, Math.floor(300 / Math.max(tile.rows, tile.cols)));
        const w = tile.cols * cell, h = tile.rows * cell;
        const fig = document.createElement("figure");
        const svg = document.createElementNS(SVGNS, "svg");
        svg.setAttribute("class", "tile"); svg.setAttribute("width", w); svg.setAttribute("height", h);
        svg.dataset.image = image.index; svg.dataset.tile = tile.name;
        if (tile.picture) {
          const pic = document.createElementNS(SVGNS, "image");
          pic.setAttribute("href", tile.picture); pic.setAttribute("width", w); pic.setAttribute("height", h);
          pic.setAttribute("preserveAspectRatio", "none");
          svg.appendChild(pic);
        } else {
          const bg = document.createElementNS(SVGNS, "rect");
          bg.setAttribute("width", w); bg.setAttribute("height", h); bg.setAttribute("fill", "#ccc");
          svg.appendChild(bg);
        }
        tile.cells.forEach((k, i) => {
          const r = Math.floor(i / tile.cols), c = i % tile.cols;
          const rect = document.createElementNS(SVGNS, "rect");
          rect.setAttribute("class", "cell");
          rect.setAttribute("x", c * cell); rect.setAttribute("y", r * cell);
          rect.setAttribute("width", cell); rect.setAttribute("height", cell);
          rect.setAttribute("fill", "rgb(255,40,0)");
          rect.dataset.key = k; rect.dataset.pos = D.visual_keys[k]; rect.dataset.row = r; rect.dataset.col = c;
          rect.appendChild(document.createElementNS(SVGNS, "title"));
          svg.appendChild(rect);
          cellsByKey[k] = { rect, tile: tile.name, image: image.index, r, c };
        });
        fig.appendChild(svg);
        const cap = document.createElement("figcaption");
        cap.textContent = `image ${image.index}, ${tile.name} (${tile.rows} x ${tile.cols}); picture: ${tile.picture_source}`;
        fig.appendChild(cap);
        box.appendChild(fig);
      });
    });
  }

  function buildTokens() {
    const v = views[state.view], strip = $("tokens");
    strip.textContent = "";
    const queryIndex = new Map(v.raw.queries.map((p, i) => [p, i]));
    const textIndex = new Map(v.raw.text_keys.map((p, j) => [p, j]));
    const starts = new Map(D.images.map((im) => [im.start, im]));
    const add = (p, text, cls) => {
      const span = document.createElement("span");
      span.className = "tok " + cls; span.textContent = text; span.dataset.pos = p;
      if (textIndex.has(p)) span.dataset.key = textIndex.get(p);
      if (queryIndex.has(p)) {
        span.classList.add("query"); span.dataset.q = queryIndex.get(p);
        span.addEventListener("click", () => { state.q = queryIndex.get(p); render(); });
      }
      strip.appendChild(span);
    };
    for (let p = 0; p < T; p++) {
      if (starts.has(p)) {
        const im = starts.get(p), n = im.tiles.reduce((a, t) => a + t.rows * t.cols, 0);
        const chip = document.createElement("span");
        chip.className = "tok image"; chip.dataset.image = im.index;
        chip.textContent = `[image ${im.index}: ${n} tokens]`;
        strip.appendChild(chip);
      }
      if (isVisual[p]) continue;
      add(p, label(p), D.kinds[p] === "newline" ? "newline" : "prompt");
    }
    v.raw.generated.forEach((t, k) => add(T + k, t, "generated"));
  }

  function buildControls() {
    const layer = $("layer");
    layer.max = L - 1;
    layer.addEventListener("input", () => { state.layer = +layer.value; render(); });
    const head = $("head");
    const opt = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text; head.appendChild(o); };
    opt(H, "layer mean");
    if (D.heads_stored === "all") for (let h = 0; h < H; h++) opt(h, `head ${h}`);
    head.addEventListener("change", () => { state.head = +head.value; render(); });
    $("shared-scale").addEventListener("change", render);
    $("view-base").addEventListener("click", () => setView("base"));
    $("view-var").addEventListener("click", () => setView("var"));
    if (!views.var) $("view-var").disabled = true;
    document.addEventListener("keydown", (e) => {
      if (e.target && e.target.tagName === "SELECT") return;
      const v = views[state.view];
      let handled = true;
      if (e.key === "ArrowLeft") state.q = Math.max(0, state.q - 1);
      else if (e.key === "ArrowRight") state.q = Math.min(v.Q - 1, state.q + 1);
      else if (e.key === "ArrowUp") state.layer = Math.min(L - 1, state.layer + 1);
      else if (e.key === "ArrowDown") state.layer = Math.max(0, state.layer - 1);
      else if (e.key === "[" && D.heads_stored === "all") state.head = (state.head + H) % (H + 1);
      else if (e.key === "]" && D.heads_stored === "all") state.head = (state.head + 1) % (H + 1);
      else if (e.key === "v" && views.var) { setView(state.view === "var" ? "base" : "var"); return e.preventDefault(); }
      else handled = false;
      if (handled) { e.preventDefault(); render(); }
    });
  }

  function setView(name) {
    if (!views[name]) return;
    const pos = views[state.view].raw.queries[state.q];
    state.view = name;
    const idx = views[name].raw.queries.indexOf(pos);  // same position if the other run has it
    state.q = idx >= 0 ? idx : Math.min(state.q, views[name].Q - 1);
    $("view-base").classList.toggle("on", name === "base");
    $("view-var").classList.toggle("on", name === "var");
    buildTokens();
    render();
  }

  // --- drawing ------------------------------------------------------------------------------------
  function render() {
    const v = views[state.view], q = state.q, l = state.layer, h = state.head, s = slot();
    $("layer").value = l; $("layer-value").textContent = l; $("head").value = h;
    const img = imageRow(v, q, l, s);
    let max = 0;
    for (let k = 0; k < NV; k++) if (img[k] > max) max = img[k];
    const other = views[state.view === "var" ? "base" : "var"];
    const oq = other ? other.raw.queries.indexOf(v.raw.queries[q]) : -1;
    if ($("shared-scale").checked && oq >= 0) {  // the same query position in the other run
      const o = imageRow(other, oq, l, s);
      for (let k = 0; k < NV; k++) if (o[k] > max) max = o[k];
    }
    for (let k = 0; k < NV; k++) {
      const c = cellsByKey[k], p = D.visual_keys[k], sink = isSink(v, l, p);
      const alpha = max > 0 ? 0.85 * img[k] / max : 0;
      c.rect.setAttribute("fill-opacity", alpha.toFixed(4));
      c.rect.dataset.v = img[k];
      c.rect.classList.toggle("sink", sink);
      c.rect.firstChild.textContent =
        `pos ${p} (${c.tile} row ${c.r}, col ${c.c}): attention ${fmt(img[k], 5)}, phi ${fmt(phiOf(v, l, p), 2)}${sink ? " (visual sink)" : ""}`;
    }
    const txt = textRow(v, q, l, s);
    let tmax = 0;
    for (let j = 0; j < v.NT; j++) if (txt[j] > tmax) tmax = txt[j];
    const qpos = v.raw.queries[q];
    document.querySelectorAll("#tokens .tok").forEach((span) => {
      if (span.dataset.image !== undefined) {
        const n = D.images[+span.dataset.image];
        let sum = 0;
        n.tiles.forEach((t) => t.cells.forEach((k) => { sum += img[k]; }));
        span.title = `attention on this image: ${fmt(sum, 4)}`;
        return;
      }
      const p = +span.dataset.pos, j = span.dataset.key === undefined ? -1 : +span.dataset.key;
      const a = j >= 0 && p <= qpos ? txt[j] : 0;
      span.style.background = a > 0 && tmax > 0 ? `rgba(255,40,0,${(0.85 * a / tmax).toFixed(3)})` : "";
      span.dataset.v = a;
      const sink = isSink(v, l, p);
      span.classList.toggle("sink", sink);
      span.classList.toggle("selected", p === qpos);
      span.title = `pos ${p}: attention ${fmt(a, 5)}` + (p < T ? `, phi ${fmt(phiOf(v, l, p), 2)}` : "") + (sink ? " (text sink)" : "");
    });
    const st = $("status");
    Object.assign(st.dataset, { view: state.view, query: q, pos: qpos, layer: l, head: h === H ? "mean" : h, max, renders: ++state.renders });
    const qtok = qpos < T ? D.tokens[qpos] : v.raw.generated[qpos - T];
    st.textContent = `${state.view === "var" ? "after VAR" : "before VAR"} · query ${JSON.stringify(qtok)} (pos ${qpos}) · layer ${l} · ${h === H ? "layer mean" : "head " + h}`;
    renderStats(v, q, l, h, max);
  }

  function renderStats(v, q, l, h, max) {
    const rows = [];
    const s = perHead(v.mass, q, l, h), r = perHead(v.ratio, q, l, h);
    rows.push(["attention on the image (s)", fmt(s)]);
    rows.push(["visual non-sink ratio (r)", fmt(r)]);
    if (h === H) {
      let n = 0;
      for (let k = 0; k < H; k++) if (centric(perHead(v.ratio, q, l, k), perHead(v.mass, q, l, k))) n++;
      rows.push([`image-centric heads (r >= ${D.params.rho}, s >= ${D.params.summ})`, `${n} of ${H}`]);
    } else {
      const c = centric(r, s);
      rows.push([`image-centric (r >= ${D.params.rho}, s >= ${D.params.summ})`, `<span class="${c ? "yes" : "no"}">${c ? "yes" : "no"}</span>`]);
    }
    if (v.edited) {
      if (h === H) {
        let n = 0;
        for (let k = 0; k < H; k++) n += v.edited[(q * L + l) * H + k];
        rows.push(["heads VAR edited in this row", `${n} of ${H}`]);
      } else {
        const e = v.edited[(q * L + l) * H + h] === 1;
        rows.push(["VAR edited this row", `<span class="${e ? "yes" : "no"}">${e ? "yes" : "no"}</span>`]);
        rows.push(["r before VAR's edit", fmt(perHead(v.ratioBefore, q, l, h))]);
      }
    }
    rows.push(["map maximum (full red)", fmt(max, 5)]);
    $("stats").innerHTML = rows.map(([a, b]) => `<tr><td>${a}</td><td>${b}</td></tr>`).join("");
    const vis = [], text = [];
    for (let p = 0; p < T; p++) if (isSink(v, l, p)) (isVisual[p] ? vis : text).push(p);
    vis.sort((a, b) => phiOf(v, l, b) - phiOf(v, l, a));
    const visText = vis.length ? vis.slice(0, 12).map((p) => `pos ${p} phi ${fmt(phiOf(v, l, p), 1)}`).join(", ") + (vis.length > 12 ? ` … (${vis.length})` : "") : "none";
    const textText = text.length ? text.slice(0, 12).map((p) => `${esc(JSON.stringify(label(p)))} phi ${fmt(phiOf(v, l, p), 1)}`).join(", ") : "none";
    const layersWith = [];
    for (let k = 0; k < L; k++) { for (const p of D.visual_keys) if (isSink(v, k, p)) { layersWith.push(k); break; } }
    $("sink-list").innerHTML =
      `<b>visual sinks</b> in layer ${l} (phi &ge; ${D.params.tau}, outlined): ${visText}<br>` +
      `<b>text sinks</b> (outlined in the strip): ${textText}<br>` +
      `<b>layers with any visual sink</b> (this run): ${layersWith.length ? layersWith.join(", ") : "none at this tau"}`;
  }

  function esc(t) { return t.replace(/[&<>]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[ch])); }

  function legend() {
    const p = D.params, sz = D.sizes;
    const mb = (b) => (b / 1e6).toFixed(2) + " MB";
    const answers = Object.entries(D.views).map(([k, v]) => `${k === "var" ? "with VAR" : "without VAR"}: ${JSON.stringify(v.answer)}`).join(" · ");
    const lines = [
      `<span class="scale"></span> attention of the query on each key, red scaled to the map's maximum (stated at the right; with "same scale", the larger of both views' maxima). ` +
        `Outlined: sinks (phi &ge; tau = ${p.tau}; visual on the grid, text in the strip). Grey tokens cannot be queries (before the first image, or the last generated token, never fed back).`,
      `Image-centric: r &ge; rho = ${p.rho} and s &ge; summ = ${p.summ} (the paper's rule; convention ${p.convention}). ` +
        (D.views.var ? `VAR: p = ${p.p}, layers ${p.var_layers.length ? p.var_layers[0] + "-" + p.var_layers[p.var_layers.length - 1] : "none"}; "after VAR" is a separate run with VAR, read after VAR's edit at hook_pattern (the pattern the model used); each run generates its own tokens.` : "VAR: not run."),
      `Answers: ${esc(answers)}`,
      `Data: ${D.heads_stored === "all" ? "every head and the layer mean" : "the layer mean only (every head would take " + mb(sz.all_heads_bytes) + ")"}; ` +
        `${D.quantisation}. Attention ${mb(sz.attention_bytes)}, inlined JSON ${mb(sz.json_bytes)}.`,
    ];
    if (D.note) lines.push(`<b>Note:</b> ${D.note}`);
    $("legend").innerHTML = lines.map((t) => `<p>${t}</p>`).join("");
  }

  $("model").textContent = D.model;
  $("prompt").textContent = "prompt: " + D.prompt;
  buildImages();
  buildControls();
  buildTokens();
  legend();
  state.q = views.base.raw.queries.findIndex((p) => p === T - 1);
  if (state.q < 0) state.q = 0;
  state.layer = Math.min(L - 1, Math.floor(L / 2));
  render();
  document.body.dataset.state = "ready";
})();
