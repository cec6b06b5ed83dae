// A study (kind "study"): per variant, validation accuracy and train loss over the epochs, the mean over
// the seeds with a band from the lowest to the highest seed; and the table of GET /v1/jobs/{id}/study
// (means with 95% t intervals, paired differences against the baseline, t-test and sign-test p).
// Refreshed while the study runs.

import { api } from "../api.js";
import { PALETTE, draw } from "../charts.js";
import { TERMINAL, badge, banner, card, fill, h, setText } from "../dom.js";
import { num, pct, seconds, shortId } from "../format.js";

const REFRESH_MS = 5000;

// The table's figures: key, header, format of a value.
const FIGURES = [
  ["best_val_acc", "Best val acc", (v) => pct(v, 2)],
  ["test_acc_at_best_val", "Test @ best val", (v) => pct(v, 2)],
  ["final_test_acc", "Final test", (v) => pct(v, 2)],
  ["final_train_loss", "Final loss", (v) => num(v)],
  ["mean_step_time_s", "Step", (v) => seconds(v)],
];

/** Per variant and epoch of the binarized phase: [epoch, mean, low, high] over the seeds' rows. */
export function bands(rows, metric) {
  const byVariant = new Map();
  for (const r of rows) {
    const [variant, seed] = String(r.trial ?? "").split("/seed");
    if (seed === undefined || variant === "pretrain" || r.phase !== "binary" || typeof r[metric] !== "number") continue;
    const epochs = byVariant.get(variant) ?? new Map();
    byVariant.set(variant, epochs);
    epochs.set(r.epoch, [...(epochs.get(r.epoch) ?? []), r[metric]]);
  }
  const out = new Map();
  for (const [variant, epochs] of byVariant) {
    out.set(
      variant,
      [...epochs.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([epoch, v]) => [epoch, v.reduce((a, b) => a + b, 0) / v.length, Math.min(...v), Math.max(...v)]),
    );
  }
  return out;
}

function bandTraces(series, color, name) {
  const x = series.map((p) => p[0]);
  const line = (y, extra) => ({ type: "scatter", x, y, hoverinfo: "skip", showlegend: false, ...extra });
  return [
    line(
      series.map((p) => p[3]),
      { mode: "lines", line: { width: 0, color }, meta: { band: name } },
    ),
    line(
      series.map((p) => p[2]),
      { mode: "lines", line: { width: 0, color }, fill: "tonexty", fillcolor: `${color}22`, meta: { band: name } },
    ),
    {
      type: "scatter",
      mode: "lines+markers",
      name,
      x,
      y: series.map((p) => p[1]),
      line: { color, width: 2 },
      marker: { size: 4, color },
      hovertemplate: "epoch %{x}<br>%{y:.4g}<extra>%{fullData.name}</extra>",
      meta: { variant: name },
    },
  ];
}

const interval = (cell, format) =>
  !cell || cell.mean == null
    ? "—"
    : cell.low == null
      ? format(cell.mean)
      : `${format(cell.mean)} [${format(cell.low)}, ${format(cell.high)}]`;
const signed = (x) => (x == null ? "—" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(2)} pt`);
const p = (x) => (x == null ? "—" : x < 0.001 ? x.toExponential(1) : x.toFixed(3));

export function studyView(root, { params, signal }) {
  const [id] = params;
  const error = banner("error", "study-error");
  const title = h("h1", {}, "Study");
  const state = badge("queued", "study-state");
  const subtitle = h("div", { class: "muted" });
  const valDiv = h("div", { id: "chart-study-val", class: "chart", dataset: { testid: "chart-study-val" } });
  const lossDiv = h("div", { id: "chart-study-loss", class: "chart", dataset: { testid: "chart-study-loss" } });
  const tbody = h("tbody");
  const head = [
    "Variant",
    "Seeds",
    ...FIGURES.map((f) => f[1]),
    "Δ best val vs baseline",
    "t-test p",
    "sign p",
    "W/L",
  ];
  root.append(
    h(
      "nav",
      { class: "crumbs" },
      h("a", { href: "#/jobs" }, "Jobs"),
      h("span", {}, "/"),
      h("a", { href: `#/jobs/${id}`, class: "mono" }, shortId(id)),
      h("span", {}, "/"),
      h("span", {}, "Study"),
    ),
    h("div", { class: "page-head" }, h("div", {}, h("h1", { class: "job-title" }, title, state), subtitle)),
    error.el,
    h(
      "div",
      { class: "grid-2" },
      card("Validation accuracy (mean over seeds; band: lowest to highest seed)", { testid: "study-val-card" }, valDiv),
      card("Train loss (mean over seeds; band: lowest to highest seed)", { testid: "study-loss-card" }, lossDiv),
    ),
    card(
      "Variants",
      { testid: "study-table-card" },
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { id: "study-table", class: "table table-dense", dataset: { testid: "study-table" } },
          h("thead", {}, h("tr", {}, head.map((t, i) => h("th", { class: i ? "num" : "" }, t)))),
          tbody,
        ),
      ),
      h(
        "p",
        { class: "muted small footnote", dataset: { testid: "study-footnote" } },
        "Means over the seeds with their 95% t intervals; differences are paired by seed (same split, same pre-training).",
      ),
    ),
  );

  function render(job, study, rows) {
    setText(title, job.name);
    state.replaceWith(badge(job.state, "study-state"));
    fill(
      subtitle,
      `${study.variants.length} variants × ${study.seeds} seeds · baseline `,
      h("code", { class: "tag" }, study.baseline),
    );
    const names = study.variants.map((v) => v.name);
    for (const [div, metric, opts] of [
      [valDiv, "val_acc", { yTitle: "val accuracy", percent: true }],
      [lossDiv, "train_loss", { yTitle: "train loss (log scale)", log: true }],
    ]) {
      const series = bands(rows, metric);
      const traces = names
        .filter((n) => series.has(n))
        .flatMap((n) => bandTraces(series.get(n), PALETTE[names.indexOf(n) % PALETTE.length], n));
      draw(div, traces, { ...opts, empty: "no trial has finished an epoch yet" });
    }
    fill(
      tbody,
      study.variants.map((v, i) => {
        const vs = v.vs_baseline?.best_val_acc;
        return h(
          "tr",
          { dataset: { testid: "study-row", variant: v.name } },
          h(
            "td",
            { class: "nowrap" },
            h("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` }),
            " ",
            h("code", { class: "tag" }, v.name),
          ),
          h("td", { class: "num" }, `${v.trials_done}/${study.seeds}`),
          FIGURES.map(([key, , format]) => h("td", { class: "num nowrap" }, interval(v.figures[key], format))),
          h(
            "td",
            { class: "num nowrap", dataset: { testid: "study-delta" } },
            vs ? `${signed(vs.mean)}${vs.low == null ? "" : ` [${signed(vs.low)}, ${signed(vs.high)}]`}` : "baseline",
          ),
          h("td", { class: "num" }, vs ? p(vs.t_p) : ""),
          h("td", { class: "num" }, vs ? p(vs.sign_p) : ""),
          h("td", { class: "num" }, vs ? `${vs.wins}/${vs.losses}` : ""),
        );
      }),
    );
  }

  let timer = null;
  async function load() {
    let again = false;
    try {
      const [job, study, rows] = await Promise.all([
        api(`/v1/jobs/${id}`, { signal }),
        api(`/v1/jobs/${id}/study`, { signal }),
        api(`/v1/jobs/${id}/metrics`, { signal }),
      ]);
      render(job, study, rows);
      error.clear();
      again = !TERMINAL.has(job.state);
    } catch (err) {
      if (signal.aborted || err.status === 401) return;
      error.show(`Could not load the study: ${err.message}`);
      again = err.status === undefined || err.status >= 500;
    }
    if (again && !signal.aborted) timer = setTimeout(load, REFRESH_MS);
  }
  signal.addEventListener("abort", () => clearTimeout(timer));
  load();
}
