// Several jobs side by side (GET /v1/compare): train loss and validation accuracy overlaid per epoch,
// and a table of the figures fsg reports. Refreshed every few seconds while any of them still runs.

import { api } from "../api.js";
import { PALETTE, draw, trace } from "../charts.js";
import { TERMINAL, badge, banner, card, fill, h, setText } from "../dom.js";
import { bytes, num, pct, seconds, shortId } from "../format.js";

const REFRESH_MS = 3000;

/** A job's curves ({phase: [...], epoch: [...], train_loss: [...], ...}) as rows {phase, epoch, ...}. */
export function rowsOf(curves) {
  const columns = Object.keys(curves ?? {});
  const n = curves?.epoch?.length ?? 0;
  return Array.from({ length: n }, (_, i) => Object.fromEntries(columns.map((c) => [c, curves[c][i]])));
}

const pretrainOf = (rows) => Math.max(0, ...rows.filter((r) => r.phase === "pretrain").map((r) => r.epoch));
const optimizerName = (o) => (o && typeof o === "object" ? o.name : o) ?? "—";

// Columns of the table: label, value, formatter, and which way is better (for the bold best cell).
const COLUMNS = [
  [
    "Best val acc",
    (j) => j.best_val_acc,
    (v, j) => (v == null ? "—" : `${pct(v, 2)}${j.best_val_epoch ? ` @${j.best_val_epoch}` : ""}`),
    "max",
  ],
  ["Test @ best val", (j) => j.test_acc_at_best_val, (v) => pct(v, 2), "max"],
  ["Last-k test", (j) => j.last_k_test_acc, (v) => pct(v, 2), "max"],
  ["Final loss", (j) => j.final_train_loss, (v) => num(v), "min"],
  ["Step time", (j) => j.mean_step_time_s, (v) => seconds(v), "min"],
  ["Packed model", (j) => j.packed_bytes, (v) => bytes(v), "min"],
];

export function compareView(root, { query, signal }) {
  const ids = query.getAll("job");
  const error = banner("error", "compare-error");
  const lossDiv = h("div", { id: "chart-compare-loss", class: "chart", dataset: { testid: "chart-compare-loss" } });
  const valDiv = h("div", { id: "chart-compare-val", class: "chart", dataset: { testid: "chart-compare-val" } });
  const tbody = h("tbody");
  const updated = h("span", { class: "muted small live" });
  const table = h(
    "table",
    { id: "compare-table", class: "table table-dense", dataset: { testid: "compare-table" } },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["", "Job", "State", "Estimator", "Epochs", ...COLUMNS.map((c) => c[0])].map((t, i) =>
          h("th", { class: i >= 4 ? "num" : "" }, t),
        ),
      ),
    ),
    tbody,
  );

  root.append(
    h("nav", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), h("span", {}, "/"), h("span", {}, "Compare")),
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Compare jobs"), h("div", { class: "muted" }, `${ids.length} selected`)),
      h("div", { class: "page-actions" }, updated),
    ),
    error.el,
    h(
      "div",
      { class: "grid-2" },
      card("Train loss", { testid: "compare-loss-card" }, lossDiv),
      card("Validation accuracy", { testid: "compare-val-card" }, valDiv),
    ),
    card(
      "Figures",
      { testid: "compare-table-card" },
      h("div", { class: "table-wrap" }, table),
      h(
        "p",
        { class: "muted small footnote" },
        "Figures of the binarized phase, as fsg train reports them; a search shows its best trial. Bold: the best value of each column.",
      ),
    ),
  );

  if (ids.length === 0) {
    error.show("No jobs selected: tick two or more jobs on the Jobs page, then press Compare.");
    return;
  }

  function render(jobs) {
    const perJob = jobs.map((j) => ({ job: j, rows: rowsOf(j.curves) }));
    const pretrains = new Set(perJob.map((p) => pretrainOf(p.rows)));
    const shared = pretrains.size === 1 ? [...pretrains][0] : 0; // one "binarized" marker only if all agree
    const names = jobs.map((j) => j.name);
    const label = (job) =>
      `${job.name}${names.filter((n) => n === job.name).length > 1 ? ` (${shortId(job.id)})` : ""} · ${job.estimator ?? "?"}`;
    const lines = (metric) =>
      perJob.map(({ job, rows }, i) =>
        trace(rows, metric, pretrainOf(rows), {
          name: label(job),
          color: PALETTE[i % PALETTE.length],
          meta: { job: job.id },
        }),
      );
    draw(lossDiv, lines("train_loss"), {
      yTitle: "train loss (log scale)",
      log: true,
      pretrainEpochs: shared,
      empty: "no epochs reported yet",
    });
    draw(valDiv, lines("val_acc"), {
      yTitle: "val accuracy",
      percent: true,
      pretrainEpochs: shared,
      empty: "no epochs reported yet",
    });

    const best = COLUMNS.map(([, value, , better]) => {
      const values = jobs.map(value).filter((v) => typeof v === "number");
      return values.length > 1 ? (better === "max" ? Math.max(...values) : Math.min(...values)) : null;
    });
    fill(
      tbody,
      jobs.map((j, i) =>
        h(
          "tr",
          { dataset: { jobId: j.id, testid: "compare-row" } },
          h("td", {}, h("span", { class: "swatch", style: `background:${PALETTE[i % PALETTE.length]}` })),
          h(
            "td",
            { class: "nowrap" },
            h("a", { href: `#/jobs/${j.id}`, class: "job-link" }, j.name),
            h("div", { class: "muted mono small" }, shortId(j.id)),
          ),
          h("td", {}, badge(j.state)),
          h(
            "td",
            { class: "nowrap" },
            h("code", { class: "tag" }, j.estimator ?? "—"),
            h("div", { class: "muted small setup" }, `${j.arch ?? "—"} · ${optimizerName(j.optimizer)}`),
          ),
          h("td", { class: "num" }, j.epochs_done ?? "—"),
          COLUMNS.map(([, value, format], c) => {
            const v = value(j);
            return h("td", { class: `num${best[c] !== null && v === best[c] ? " best-cell" : ""}` }, format(v, j));
          }),
        ),
      ),
    );
  }

  const path = `/v1/compare?${ids.map((id) => `job=${encodeURIComponent(id)}`).join("&")}`;
  let timer = null;
  async function load() {
    let again = false;
    try {
      const { jobs } = await api(path, { signal });
      render(jobs);
      error.clear();
      again = jobs.some((j) => !TERMINAL.has(j.state));
      setText(updated, again ? `live · updated ${new Date().toLocaleTimeString()}` : "all jobs finished");
    } catch (err) {
      if (signal.aborted || err.status === 401) return;
      error.show(`Could not compare these jobs: ${err.message}`);
      again = err.status === undefined || err.status >= 500; // a network hiccup: try again
    }
    if (again && !signal.aborted) timer = setTimeout(load, REFRESH_MS);
  }
  signal.addEventListener("abort", () => clearTimeout(timer));
  load();
}
