// The anomaly page: a live list fed by server-sent events from /events.
//
// Every value shown comes from Kafka and is untrusted: it only ever reaches the page as
// text (textContent) or as pixel values drawn on a canvas, never as markup.
"use strict";

(() => {
  const list = document.getElementById("anomalies");
  const template = document.getElementById("anomaly-template");
  const connection = document.getElementById("connection");
  let config = null;

  const text = (element, value) => {
    element.textContent = value;
  };
  const fixed = (value, digits) =>
    typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "?";
  const percent = (part, whole) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : "–");

  function time(ms) {
    const date = new Date(ms);
    return Number.isNaN(date.getTime()) ? String(ms) : date.toISOString();
  }

  // Draws values in [0, 1] as a width x height image, one canvas pixel per image pixel, shown
  // at a whole multiple of its size so the pixels stay sharp: about 72 CSS pixels wide (9x
  // for 8x8) and never below 2x, so a 64x64 image shows at 128 pixels, every pixel visible.
  // `paint` maps a value to [r, g, b].
  function draw(canvas, values, paint) {
    const { width, height } = config.model;
    canvas.width = width;
    canvas.height = height;
    canvas.style.width = `${width * Math.max(2, Math.round(72 / width))}px`;
    const context = canvas.getContext("2d");
    const image = context.createImageData(width, height);
    for (let i = 0; i < width * height; i += 1) {
      const value = Math.min(1, Math.max(0, Number(values[i]) || 0));
      image.data.set([...paint(value), 255], 4 * i);
    }
    context.putImageData(image, 0, 0);
  }

  // 1 is black, as in the X/. art: X = 1 = black, . = 0 = white.
  const ink = (value) => {
    const level = Math.round(255 * (1 - value));
    return [level, level, level];
  };
  // The per-pixel difference |input - reconstruction|: white where they agree, red where not.
  const heat = (value) => {
    const level = Math.round(255 * (1 - value));
    return [255, level, level];
  };

  function card(anomaly) {
    const item = template.content.firstElementChild.cloneNode(true);
    const field = (name) => item.querySelector(`.${name}`);
    item.dataset.seq = String(anomaly.seq);
    const size = `${config.model.width}x${config.model.height}`;
    const input = field("input");
    const reconstruction = field("reconstruction");
    const difference = field("difference");
    draw(input, anomaly.pixels, ink);
    draw(reconstruction, anomaly.reconstruction, ink);
    const delta = anomaly.pixels.map((value, i) => Math.abs(value - anomaly.reconstruction[i]));
    draw(difference, delta, heat);
    input.setAttribute("aria-label", `input image, ${size}`);
    reconstruction.setAttribute("aria-label", `reconstruction, ${size}`);
    difference.setAttribute("aria-label", `per-pixel difference, ${size}`);
    text(field("id"), anomaly.id);
    text(field("similarity"), `${fixed(anomaly.similarity, 4)} ${anomaly.metric}`);
    text(field("threshold"), fixed(anomaly.threshold, 4));
    text(field("model"), anomaly.model.version);
    field("model").title = `sha256 ${anomaly.model.sha256}`;
    text(field("source"), `partition ${anomaly.source.partition} · offset ${anomaly.source.offset}`);
    field("source").title = `topic ${anomaly.source.topic}`;
    text(field("time"), time(anomaly.ts));
    text(field("detected"), anomaly.detected_at);
    return item;
  }

  function showConfig() {
    const model = config.model;
    text(document.getElementById("model"), `${model.version} (${model.mode}, ${model.width}x${model.height})`);
    document.getElementById("model").title = `sha256 ${model.sha256}`;
    text(document.getElementById("threshold"), `${model.metric} < ${fixed(model.threshold, 4)}`);
  }

  function showStats(stats) {
    const consumed = stats.scored + stats.dead_letters;
    text(
      document.getElementById("anomaly-rate"),
      `${percent(stats.anomalies, stats.scored)} (${stats.anomalies} of ${stats.scored})`,
    );
    text(
      document.getElementById("dlq-rate"),
      `${percent(stats.dead_letters, consumed)} (${stats.dead_letters} of ${consumed})`,
    );
    const perSecond = stats.seconds > 0 ? consumed / stats.seconds : 0;
    text(document.getElementById("throughput"), `${perSecond.toFixed(1)} images/s`);
    text(document.getElementById("window"), `rates over the last ${Math.round(stats.seconds)} s`);
    const rejected = document.getElementById("rejected");
    rejected.hidden = stats.rejected === 0;
    text(rejected, `${stats.rejected} anomalies could not be shown (invalid payload)`);
  }

  function settle() {
    while (list.children.length > config.capacity) list.lastElementChild.remove();
    document.getElementById("empty").hidden = list.children.length > 0;
  }

  function connected(state, label) {
    connection.className = `state-${state}`;
    text(connection, label);
  }

  const source = new EventSource("events");
  source.addEventListener("open", () => connected("live", "live"));
  source.addEventListener("error", () => connected("connecting", "reconnecting…"));
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    config = data.config;
    showConfig();
    showStats(data.stats);
    list.replaceChildren(...data.anomalies.map(card));
    settle();
  });
  source.addEventListener("anomalies", (event) => {
    const fresh = JSON.parse(event.data).anomalies; // newest first
    for (const anomaly of fresh.slice().reverse()) list.prepend(card(anomaly));
    settle();
  });
  source.addEventListener("stats", (event) => showStats(JSON.parse(event.data)));
  // Another model went live: the header follows; the anomalies shown keep their own model.
  source.addEventListener("config", (event) => {
    config = JSON.parse(event.data);
    showConfig();
    settle();
  });
})();
