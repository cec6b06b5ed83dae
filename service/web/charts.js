// Plotly charts of per-epoch curves. Plotly (window.Plotly, from /ui/vendor/plotly.min.js) keeps each
// chart's traces on its div as `.data`; every trace carries `meta` ({metric, job, trial}) for tests.

export const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
export const METRIC_COLORS = { train: "#2563eb", val: "#d97706", test: "#059669" };

const CONFIG = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
};

const AXIS = {
  gridcolor: "#e5e7eb",
  zerolinecolor: "#e5e7eb",
  linecolor: "#cbd5e1",
  ticks: "outside",
  tickcolor: "#cbd5e1",
};

/** The x position of an epoch on one axis for both phases: pre-training epochs first, then binarized. */
export const epochX = (phase, epoch, pretrainEpochs) => (phase === "pretrain" ? epoch : pretrainEpochs + epoch);

/** Rows ordered as trained: pre-training first, then binarized, each by epoch. */
export function ordered(rows) {
  const rank = (r) => (r.phase === "pretrain" ? 0 : 1);
  return [...rows].sort((a, b) => rank(a) - rank(b) || a.epoch - b.epoch);
}

/** One line of `metric` over `rows` ({phase, epoch, ...values}); rows without the metric are skipped. */
export function trace(rows, metric, pretrainEpochs, { name, color, width = 2, dash, meta = {} } = {}) {
  const points = ordered(rows).filter((r) => typeof r[metric] === "number");
  return {
    type: "scatter",
    mode: "lines+markers",
    name: name ?? metric.replace("_", " "),
    x: points.map((r) => epochX(r.phase, r.epoch, pretrainEpochs)),
    y: points.map((r) => r[metric]),
    text: points.map((r) => `${r.phase} epoch ${r.epoch}`),
    hovertemplate: "%{text}<br>%{y:.4g}<extra>%{fullData.name}</extra>",
    line: { color, width, dash },
    marker: { size: width > 2 ? 7 : 5, color },
    meta: { metric, ...meta },
  };
}

/** Draw (or redraw in place) `traces` on `div`; `percent` formats the y axis as accuracy, `log` makes
 * it logarithmic (losses: one diverged epoch must not flatten the rest of the curve). */
export function draw(
  div,
  traces,
  { yTitle, percent = false, log = false, pretrainEpochs = 0, empty = "waiting for the first epoch…" } = {},
) {
  if (!window.Plotly) {
    div.textContent = "Charts are unavailable: /ui/vendor/plotly.min.js did not load.";
    return;
  }
  const hasPoints = traces.some((t) => t.x.length);
  const maxX = Math.max(1, ...traces.flatMap((t) => t.x));
  const shapes = [];
  const annotations = [];
  if (pretrainEpochs > 0 && hasPoints) {
    const x = pretrainEpochs + 0.5;
    shapes.push({
      type: "line",
      x0: x,
      x1: x,
      yref: "paper",
      y0: 0,
      y1: 1,
      line: { color: "#94a3b8", width: 1, dash: "dot" },
    });
    annotations.push({
      x,
      y: 1,
      yref: "paper",
      text: "binarized →",
      showarrow: false,
      xanchor: "left",
      yanchor: "top",
      font: { size: 11, color: "#64748b" },
    });
  }
  if (!hasPoints) {
    annotations.push({
      text: empty,
      xref: "paper",
      yref: "paper",
      x: 0.5,
      y: 0.5,
      showarrow: false,
      font: { size: 13, color: "#94a3b8" },
    });
  }
  const layout = {
    margin: { l: 56, r: 16, t: 36, b: 44 },
    height: 300,
    font: { family: "Inter, system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12, color: "#334155" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    hovermode: "x unified",
    showlegend: true,
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 11 } },
    xaxis: {
      ...AXIS,
      title: { text: "epoch" },
      dtick: maxX <= 12 ? 1 : undefined,
      range: hasPoints ? undefined : [0.5, 3.5],
    },
    yaxis: {
      ...AXIS,
      title: { text: yTitle },
      type: log && hasPoints ? "log" : "linear",
      dtick: log && hasPoints ? "D2" : undefined, // 1, 2, 5 per decade: no crowded minor labels
      tickformat: percent ? ".0%" : undefined,
      rangemode: percent ? "tozero" : "normal",
    },
    shapes,
    annotations,
  };
  window.Plotly.react(div, traces, layout, CONFIG);
}
