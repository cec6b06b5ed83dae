// The job list: polled every 2 s and updated in place (selection and scroll survive), with a checkbox
// per job to pick jobs for the compare page.

import { api } from "../api.js";
import { TERMINAL, badge, banner, card, fill, h, setText, updateBadge } from "../dom.js";
import { ago, datetime, pct, shortId } from "../format.js";

const POLL_MS = 2000;
const PAGE_SIZE = 50;
const ACTIVE = new Set(["dispatching", "running", "cancelling", "retrying"]);

// Module state: the selection and finished jobs' progress survive a visit to a job page and back.
const selected = new Set();
const progressCache = new Map(); // job id -> {done, bestVal, final}

/** Epochs a job trains in all: pre-training plus binarized (null for a search: trials may stop early). */
export function totalEpochs(job) {
  if (job.kind === "search") return null;
  return (job.spec?.init?.pretrain_epochs ?? 0) + (job.spec?.epochs ?? 0);
}

/** Finished epochs (all trials for a search) and the best binarized validation accuracy so far. */
export function progressOf(rows) {
  const binary = rows.filter((r) => r.phase === "binary" && typeof r.val_acc === "number");
  return { done: rows.length, bestVal: binary.length ? Math.max(...binary.map((r) => r.val_acc)) : null };
}

async function refreshProgress(jobs, signal) {
  const due = jobs.filter((job) => {
    if (job.state === "queued" && !job.attempts) return false;
    const cached = progressCache.get(job.id);
    return !cached || !cached.final || ACTIVE.has(job.state);
  });
  await Promise.all(
    due.map(async (job) => {
      try {
        const rows = await api(`/v1/jobs/${job.id}/metrics`, { signal });
        progressCache.set(job.id, { ...progressOf(rows), final: TERMINAL.has(job.state) });
      } catch (error) {
        if (error.name === "AbortError") throw error;
        // one job's metrics failing leaves its cell as it was
      }
    }),
  );
}

function progressCell() {
  const bar = h("div", { class: "progress-bar" });
  const label = h("span", { class: "progress-label", dataset: { testid: "progress" } });
  return { el: h("div", { class: "progress" }, h("div", { class: "progress-track" }, bar), label), bar, label };
}

function newRow(job, onToggle) {
  const check = h("input", {
    type: "checkbox",
    class: "row-check",
    "aria-label": `select ${job.name} to compare`,
    dataset: { testid: `select-${job.id}` },
    checked: selected.has(job.id),
    onchange: (e) => onToggle(job.id, e.target.checked),
  });
  const state = badge(job.state);
  const progress = progressCell();
  const cells = {
    state,
    progress,
    estimator: h("code", { class: "tag" }),
    best: h("span", { class: "num", dataset: { testid: "best-val" } }),
    created: h("span", {}),
  };
  const name = h(
    "a",
    { href: `#/jobs/${job.id}`, class: "job-link", dataset: { testid: "job-link" } },
    h("span", { class: "job-name" }, job.name),
    job.kind === "search" ? h("span", { class: "pill" }, "search") : null,
  );
  const tr = h(
    "tr",
    { dataset: { jobId: job.id, testid: "job-row" } },
    h("td", { class: "col-check" }, check),
    h("td", {}, state),
    h("td", {}, name, h("div", { class: "muted mono small" }, shortId(job.id))),
    h("td", {}, cells.estimator),
    h("td", {}, progress.el),
    h("td", { class: "num" }, cells.best),
    h("td", { class: "muted" }, cells.created),
  );
  return { tr, check, cells };
}

function updateRow(row, job) {
  const { cells } = row;
  row.tr.dataset.state = job.state;
  row.tr.classList.toggle("selected", selected.has(job.id));
  row.check.checked = selected.has(job.id);
  updateBadge(cells.state, job.state);
  setText(cells.estimator, job.spec?.estimator?.name ?? "—");
  const p = progressCache.get(job.id) ?? { done: 0, bestVal: null };
  const total = totalEpochs(job);
  setText(cells.progress.label, total === null ? `${p.done} epochs` : `${p.done}/${total}`);
  const fraction = total ? Math.min(1, p.done / total) : job.state === "succeeded" ? 1 : 0;
  cells.progress.bar.style.width = `${(100 * fraction).toFixed(1)}%`;
  cells.progress.bar.dataset.state = job.state;
  setText(cells.best, pct(p.bestVal ?? job.summary?.best_val_acc));
  setText(cells.created, ago(job.created_at));
  cells.created.title = datetime(job.created_at);
}

export function jobsView(root, { signal }) {
  const error = banner("error", "jobs-error");
  const counts = h("span", { class: "muted", dataset: { testid: "jobs-counts" } });
  const updated = h("span", { class: "muted small live", dataset: { testid: "jobs-updated" } }, "loading…");
  const compare = h("button", {
    class: "btn btn-primary",
    dataset: { testid: "compare-button" },
    disabled: true,
    onclick: openCompare,
  });
  const clear = h(
    "button",
    { class: "btn btn-ghost", dataset: { testid: "clear-selection" }, onclick: clearSelection },
    "Clear",
  );
  const tbody = h("tbody");
  const empty = h(
    "div",
    { class: "empty", hidden: true, dataset: { testid: "jobs-empty" } },
    h("p", {}, "No jobs yet."),
    h("p", { class: "muted" }, "Submit one with ", h("code", {}, "fsg submit spec.json"), " or POST /v1/jobs."),
  );
  const table = h(
    "table",
    { id: "jobs-table", class: "table", dataset: { testid: "jobs-table" } },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["", "State", "Job", "Estimator", "Progress", "Best val acc", "Created"].map((t, i) =>
          h("th", { class: i === 0 ? "col-check" : i === 5 ? "num" : "" }, t),
        ),
      ),
    ),
    tbody,
  );
  const rows = new Map();

  function syncSelection() {
    compare.disabled = selected.size < 2;
    fill(compare, selected.size < 2 ? "Compare (select 2+)" : `Compare ${selected.size} jobs`);
    clear.hidden = selected.size === 0;
    for (const [id, row] of rows) {
      row.check.checked = selected.has(id);
      row.tr.classList.toggle("selected", selected.has(id));
    }
  }

  function toggle(id, on) {
    if (on) selected.add(id);
    else selected.delete(id);
    syncSelection();
  }

  function clearSelection() {
    selected.clear();
    syncSelection();
  }

  function openCompare() {
    const query = [...selected].map((id) => `job=${encodeURIComponent(id)}`).join("&");
    location.hash = `#/compare?${query}`;
  }

  function render(jobs) {
    const seen = new Set();
    jobs.forEach((job, i) => {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = newRow(job, toggle);
        rows.set(job.id, row);
      }
      updateRow(row, job);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] ?? null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    empty.hidden = jobs.length > 0;
    table.hidden = jobs.length === 0;
    const active = jobs.filter((j) => ACTIVE.has(j.state)).length;
    const queued = jobs.filter((j) => j.state === "queued").length;
    setText(counts, `${jobs.length} job${jobs.length === 1 ? "" : "s"} · ${active} active · ${queued} queued`);
    syncSelection();
  }

  let timer = null;
  async function poll() {
    try {
      const page = await api(`/v1/jobs?limit=${PAGE_SIZE}`, { signal });
      await refreshProgress(page.items, signal);
      render(page.items);
      error.clear();
      setText(updated, `live · updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      if (signal.aborted) return;
      if (err.status !== 401) error.show(`Could not load the jobs: ${err.message}`);
    }
    if (!signal.aborted) timer = setTimeout(poll, POLL_MS);
  }
  signal.addEventListener("abort", () => clearTimeout(timer));

  root.append(
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Jobs"), counts),
      h("div", { class: "page-actions" }, updated, clear, compare),
    ),
    error.el,
    card("All jobs", { testid: "jobs-card" }, h("div", { class: "table-wrap" }, table), empty),
  );
  syncSelection();
  poll();
}
