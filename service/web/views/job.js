// One job: live curves from its event stream (one point per finished epoch), a search's trials, the
// packed model's summary, downloads, cancel and the link to the Ray dashboard.

import { ApiError, api, download } from "../api.js";
import { METRIC_COLORS, PALETTE, draw, ordered, trace } from "../charts.js";
import { TERMINAL, badge, banner, card, fill, h, setText, updateBadge } from "../dom.js";
import { ago, bytes, datetime, duration, int, num, pct, seconds, shortId } from "../format.js";
import { follow } from "../sse.js";
import { totalEpochs } from "./jobs.js";

const LOSSES = ["train_loss", "val_loss", "test_loss"];
const ACCURACIES = ["train_acc", "val_acc", "test_acc"];
const ACTIVITY_MAX = 10;
// Learned estimators' contribution telemetry (fsg_core: FSG and MetaQuant statistics, per epoch).
const TERMS = ["slow_term_rms", "fast_term_rms"];
const COSINES = ["update_ste_cos", "fast_slow_cos"];
const TERM_COLORS = { slow_term_rms: "#7c3aed", fast_term_rms: "#0891b2", update_ste_cos: "#dc2626", fast_slow_cos: "#4b5563" };

/** Best / last-k figures of binarized rows, as fsg_core.train.summarize_history computes them
 * (k: at most a third of the binarized epochs, at most 10, at least 1). */
export function figuresOf(rows) {
  // BiPer's first (continuous) stage is not a BNN: kept out of the figures, as summarize_history does.
  const binary = ordered(rows).filter((r) => r.phase === "binary" && r.biper_stage !== 1);
  const val = binary.filter((r) => typeof r.val_acc === "number");
  const test = binary.filter((r) => typeof r.test_acc === "number").map((r) => r.test_acc);
  const steps = binary.filter((r) => typeof r.step_time_s === "number").map((r) => r.step_time_s);
  const best = val.reduce((a, r) => (a === null || r.val_acc > a.val_acc ? r : a), null);
  const k = Math.max(1, Math.min(10, Math.floor(binary.length / 3)));
  const tail = test.slice(-k);
  return {
    best_val_acc: best?.val_acc ?? null,
    best_val_epoch: best?.epoch ?? null,
    test_acc_at_best_val: best?.test_acc ?? null,
    last_k: tail.length,
    last_k_test_acc: tail.length ? tail.reduce((a, b) => a + b, 0) / tail.length : null,
    mean_step_time_s: steps.length ? steps.reduce((a, b) => a + b, 0) / steps.length : null,
  };
}

function stat(label, testid) {
  const value = h("div", { class: "stat-value", dataset: { testid } }, "—");
  const sub = h("div", { class: "stat-sub muted" });
  return { el: h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), value, sub), value, sub };
}

export function jobView(root, { params: [jobId], signal }) {
  const id = decodeURIComponent(jobId);
  const base = `/v1/jobs/${encodeURIComponent(id)}`;
  const curves = new Map(); // trial key ("" for a training job) -> Map("phase:epoch" -> row)
  let job = null;
  let trials = [];
  let checkpoints = [];
  const activity = [];

  // --- skeleton -------------------------------------------------------------------------------
  const error = banner("error", "job-error");
  const note = banner("note", "job-notice");
  const title = h("span", { class: "title-text" }, "…");
  const state = badge("queued", "job-state");
  const live = h(
    "span",
    { class: "live-status", dataset: { testid: "stream-status", status: "connecting" } },
    "connecting…",
  );
  const subtitle = h("div", { class: "muted subtitle" });

  const cancel = h(
    "button",
    { class: "btn btn-danger-outline", dataset: { testid: "cancel-button" }, onclick: askCancel },
    "Cancel job",
  );
  const confirm = h(
    "span",
    { class: "confirm", hidden: true, dataset: { testid: "cancel-confirm-box" } },
    h("span", { class: "muted" }, "Stop this job?"),
    h("button", { class: "btn btn-danger", dataset: { testid: "cancel-confirm" }, onclick: doCancel }, "Yes, cancel"),
    h("button", { class: "btn btn-ghost", onclick: () => showConfirm(false) }, "Keep running"),
  );
  const packed = h(
    "button",
    { class: "btn", disabled: true, dataset: { testid: "download-packed" }, onclick: () => fetchFile("packed") },
    "↓ Packed model",
  );
  const onnx = h(
    "button",
    { class: "btn", disabled: true, dataset: { testid: "download-onnx" }, onclick: () => fetchFile("onnx") },
    "↓ ONNX",
  );
  const full = h(
    "button",
    { class: "btn", disabled: true, dataset: { testid: "download-full" }, onclick: () => fetchFile("full") },
    "↓ Full checkpoint",
  );
  const studyLink = h(
    "a",
    { class: "btn btn-primary", href: `#/studies/${id}`, hidden: true, dataset: { testid: "study-link" } },
    "Study table",
  );
  const ray = h(
    "a",
    {
      class: "btn",
      target: "_blank",
      rel: "noopener",
      dataset: { testid: "ray-dashboard-link" },
      "aria-disabled": "true",
    },
    "Ray dashboard ↗",
  );

  const stats = {
    estimator: stat("Estimator", "stat-estimator"),
    model: stat("Model", "stat-model"),
    epochs: stat("Epochs", "stat-epochs"),
    best: stat("Best val acc", "stat-best-val"),
    test: stat("Test acc @ best val", "stat-test-at-best"),
    lastK: stat("Last-k test acc", "stat-last-k"),
    step: stat("Step time", "stat-step-time"),
    runtime: stat("Runtime", "stat-runtime"),
  };
  const jobErrorBox = h("pre", { class: "job-error", hidden: true, dataset: { testid: "job-error-text" } });

  const lossDiv = h("div", { id: "chart-loss", class: "chart", dataset: { testid: "chart-loss" } });
  const accDiv = h("div", { id: "chart-acc", class: "chart", dataset: { testid: "chart-acc" } });
  const termsDiv = h("div", { id: "chart-terms", class: "chart", dataset: { testid: "chart-terms" } });
  const cosDiv = h("div", { id: "chart-cos", class: "chart", dataset: { testid: "chart-cos" } });
  const telemetry = h(
    "div",
    { class: "grid-2", hidden: true, dataset: { testid: "telemetry" } },
    card("Slow and fast terms (RMS of a·s and (1−a)·c·f)", { testid: "terms-card" }, termsDiv),
    card("Cosines (update vs STE's c·g; fast vs slow)", { testid: "cos-card" }, cosDiv),
  );
  const trialsBody = h("tbody");
  const trialsCard = card(
    "Trials",
    { id: "trials", testid: "trials-card" },
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "trials-table", class: "table", dataset: { testid: "trials-table" } },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Trial", "State", "Config", "Epochs", "Best metric", ""].map((t, i) =>
              h("th", { class: i === 3 || i === 4 ? "num" : "" }, t),
            ),
          ),
        ),
        trialsBody,
      ),
    ),
  );
  trialsCard.hidden = true;
  const summaryBody = h(
    "div",
    { id: "summary", dataset: { testid: "summary" } },
    h("p", { class: "muted" }, "Loading…"),
  );
  const activityList = h("ol", { class: "activity", id: "activity", dataset: { testid: "activity" } });

  root.append(
    h(
      "nav",
      { class: "crumbs" },
      h("a", { href: "#/jobs" }, "Jobs"),
      h("span", {}, "/"),
      h("span", { class: "mono" }, shortId(id)),
    ),
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", { class: "job-title" }, title, state, live), subtitle),
      h("div", { class: "page-actions" }, confirm, cancel, studyLink, packed, onnx, full, ray),
    ),
    error.el,
    note.el,
    h(
      "div",
      { class: "stats" },
      Object.values(stats).map((s) => s.el),
    ),
    jobErrorBox,
    h(
      "div",
      { class: "grid-2" },
      card("Loss", { testid: "loss-card" }, lossDiv),
      card("Accuracy", { testid: "acc-card" }, accDiv),
    ),
    telemetry,
    trialsCard,
    h(
      "div",
      { class: "grid-2 grid-wide-left" },
      card("Model summary", { testid: "summary-card" }, summaryBody),
      card("Activity", { testid: "activity-card" }, activityList),
    ),
  );

  // --- rendering ------------------------------------------------------------------------------
  const pretrainEpochs = () => job?.spec?.init?.pretrain_epochs ?? 0;
  const rowsOf = (trialKey) => [...(curves.get(trialKey)?.values() ?? [])];
  const bestTrial = () => trials.find((t) => t.is_best)?.trial_key ?? null;

  function renderJob() {
    if (!job) return;
    setText(title, job.name);
    updateBadge(state, job.state);
    document.title = `${job.name} · ${job.state} · fsg`;
    fill(
      subtitle,
      h("span", { class: "mono" }, job.id),
      ` · ${job.kind} · created ${ago(job.created_at)}`,
      job.attempts > 1 ? ` · attempt ${job.attempts}` : "",
    );
    studyLink.hidden = job.kind !== "study";
    const finished = TERMINAL.has(job.state);
    if (finished && note.el.dataset.about === "cancel") note.show(`Job ${job.state}.`);
    cancel.hidden = finished || job.state === "cancelling";
    if (cancel.hidden) showConfirm(false);
    if (job.ray_dashboard_url) {
      ray.href = job.ray_dashboard_url;
      ray.removeAttribute("aria-disabled");
      // Ray's dashboard asks for Ray's own token (not fsg's): `ray get-auth-token` prints it on the cluster.
      ray.title =
        "this job's latest attempt in the Ray dashboard (its task, with the Train or Tune actors it started); " +
        "Ray asks for its own token: `ray get-auth-token` prints it";
    } else {
      ray.removeAttribute("href");
      ray.setAttribute("aria-disabled", "true");
      ray.title = "available once the job has been dispatched to Ray";
    }
    jobErrorBox.hidden = !job.error;
    setText(jobErrorBox, job.error ? `Error: ${job.error}` : "");
    renderStats();
  }

  function renderStats() {
    if (!job) return;
    const spec = job.spec ?? {};
    setText(stats.estimator.value, spec.estimator?.name ?? "—");
    setText(stats.estimator.sub, spec.optimizer ? `${spec.optimizer.name} · lr ${num(spec.optimizer.lr, 3)}` : "");
    setText(stats.model.value, spec.model?.arch ?? "—");
    setText(stats.model.sub, spec.data?.dataset ?? "");
    const search = job.kind === "search";
    const done = search ? [...curves.values()].reduce((n, m) => n + m.size, 0) : rowsOf("").length;
    const total = totalEpochs(job);
    setText(stats.epochs.value, total === null ? `${done}` : `${done} / ${total}`);
    setText(
      stats.epochs.sub,
      search
        ? `epochs over ${curves.size} trial${curves.size === 1 ? "" : "s"}`
        : pretrainEpochs()
          ? `${pretrainEpochs()} pre-training + ${spec.epochs} binarized`
          : "binarized",
    );
    const current = figuresOf(rowsOf(search ? (bestTrial() ?? "") : ""));
    const f = { ...current, ...Object.fromEntries(Object.entries(job.summary ?? {}).filter(([, v]) => v !== null)) };
    setText(stats.best.value, pct(f.best_val_acc));
    setText(
      stats.best.sub,
      f.best_val_epoch ? `binarized epoch ${f.best_val_epoch}` : search && bestTrial() ? `trial ${bestTrial()}` : "",
    );
    setText(stats.test.value, pct(f.test_acc_at_best_val));
    setText(stats.lastK.value, pct(f.last_k_test_acc));
    setText(stats.lastK.sub, f.last_k ? `last ${f.last_k} epochs` : "");
    setText(stats.step.value, seconds(f.mean_step_time_s));
    setText(stats.step.sub, f.mean_step_time_s ? "mean per step" : "");
    setText(stats.runtime.value, duration(job.started_at, job.finished_at));
    setText(
      stats.runtime.sub,
      job.finished_at ? `finished ${ago(job.finished_at)}` : job.started_at ? "running" : "not started",
    );
  }

  let drawTimer = null;
  function scheduleDraw() {
    if (drawTimer === null) drawTimer = setTimeout(() => ((drawTimer = null), drawCharts()), 80);
  }

  function drawCharts() {
    if (signal.aborted || !job) return;
    const p = pretrainEpochs();
    if (job.kind === "search") {
      const best = bestTrial();
      const keys = [...new Set([...trials.map((t) => t.trial_key), ...curves.keys()])].filter((k) => curves.has(k));
      const style = (key, i) => ({
        name: key === best ? `${key} (best)` : key,
        color: key === best ? "#dc2626" : PALETTE[i % PALETTE.length] + (best ? "99" : ""),
        width: key === best ? 3.5 : 1.5,
        meta: { trial: key, best: key === best },
      });
      draw(
        lossDiv,
        keys.map((k, i) => trace(rowsOf(k), "train_loss", p, style(k, i))),
        { yTitle: "train loss (log scale)", log: true, pretrainEpochs: p },
      );
      draw(
        accDiv,
        keys.map((k, i) => trace(rowsOf(k), "val_acc", p, style(k, i))),
        { yTitle: "val accuracy", percent: true, pretrainEpochs: p },
      );
    } else {
      const rows = rowsOf("");
      const pick = (metrics) =>
        metrics.filter((m) => rows.some((r) => typeof r[m] === "number") || m.startsWith("train"));
      const colored = (m) => ({ color: METRIC_COLORS[m.split("_")[0]], meta: { job: job.id } });
      draw(
        lossDiv,
        pick(LOSSES).map((m) => trace(rows, m, p, colored(m))),
        { yTitle: "loss (log scale)", log: true, pretrainEpochs: p },
      );
      draw(
        accDiv,
        pick(ACCURACIES).map((m) => trace(rows, m, p, colored(m))),
        { yTitle: "accuracy", percent: true, pretrainEpochs: p },
      );
      // Only learned estimators report these; the cards stay hidden for every other job.
      const has = (metrics) => metrics.filter((m) => rows.some((r) => typeof r[m] === "number"));
      telemetry.hidden = !has([...TERMS, ...COSINES]).length;
      if (!telemetry.hidden) {
        const tinted = (m) => ({ color: TERM_COLORS[m], meta: { job: job.id } });
        draw(termsDiv, has(TERMS).map((m) => trace(rows, m, p, tinted(m))), {
          yTitle: "RMS (log scale)",
          log: true,
          pretrainEpochs: p,
        });
        draw(cosDiv, has(COSINES).map((m) => trace(rows, m, p, tinted(m))), { yTitle: "cosine", pretrainEpochs: p });
      }
    }
    renderStats();
  }

  function renderTrials() {
    trialsCard.hidden = job?.kind !== "search";
    const rows = [...trials].sort(
      (a, b) => Number(b.is_best) - Number(a.is_best) || a.trial_key.localeCompare(b.trial_key),
    );
    fill(
      trialsBody,
      rows.length
        ? rows.map((t) =>
            h(
              "tr",
              {
                class: t.is_best ? "best" : "",
                dataset: { trial: t.trial_key, best: String(t.is_best), testid: "trial-row" },
              },
              h("td", { class: "mono" }, t.trial_key),
              h("td", {}, badge(t.state === "stopped" ? "cancelled" : t.state, "trial-state")),
              h(
                "td",
                { class: "mono small" },
                Object.entries(t.config ?? {})
                  .map(([k, v]) => `${k}=${typeof v === "number" ? num(v, 3) : v}`)
                  .join("  "),
              ),
              h("td", { class: "num" }, int(t.epochs)),
              h("td", { class: "num" }, job?.spec?.search?.metric?.endsWith("acc") ? pct(t.metric, 2) : num(t.metric)),
              h(
                "td",
                {},
                t.is_best
                  ? h("span", { class: "pill pill-best" }, "best")
                  : t.error
                    ? h("span", { class: "muted small", title: t.error }, "error")
                    : "",
              ),
            ),
          )
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No trials yet.")),
    );
  }

  function renderSummary(summary) {
    if (!summary) {
      fill(
        summaryBody,
        h(
          "p",
          { class: "muted", dataset: { testid: "summary-empty" } },
          "Available once the job writes its first packed checkpoint.",
        ),
      );
      return;
    }
    const t = summary.summary.totals;
    const kv = (k, v, testid) => [h("dt", {}, k), h("dd", { dataset: testid ? { testid } : undefined }, v)];
    const layers = summary.summary.layers ?? [];
    fill(
      summaryBody,
      h(
        "dl",
        { class: "kv" },
        kv("Checkpoint", `${summary.phase} epoch ${summary.epoch}`),
        kv("Packed file", bytes(summary.file_bytes), "summary-file-bytes"),
        kv("fp32 state dict", bytes(summary.fp32_state_dict_bytes)),
        kv("Compression", `${num(summary.compression_ratio, 3)}×`, "summary-compression"),
        kv("Parameters", `${int(t.total_params)} (${pct(t.binary_fraction)} 1-bit)`),
        kv("1-bit / fp32 params", `${int(t.binary_params)} / ${int(t.fp_params)}`),
        kv("MACs (1-bit / fp)", `${int(t.binary_macs)} / ${int(t.fp_macs)}`),
      ),
      h(
        "details",
        { class: "layers" },
        h("summary", {}, `Per-layer table (${layers.length} layers)`),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "table table-compact", dataset: { testid: "summary-layers" } },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Layer", "Type", "Output", "1-bit", "fp32", "Memory"].map((c, i) =>
                  h("th", { class: i > 2 ? "num" : "" }, c),
                ),
              ),
            ),
            h(
              "tbody",
              {},
              layers.map((l) =>
                h(
                  "tr",
                  { class: l.binary_params ? "binary-layer" : "" },
                  h("td", { class: "mono" }, l.name),
                  h("td", {}, l.type),
                  h("td", { class: "mono small" }, (l.output_shape ?? []).join("×")),
                  h("td", { class: "num" }, int(l.binary_params)),
                  h("td", { class: "num" }, int(l.fp_params)),
                  h("td", { class: "num" }, bytes(l.memory_bytes)),
                ),
              ),
            ),
          ),
        ),
      ),
    );
  }

  function renderActivity() {
    fill(
      activityList,
      activity.length
        ? activity
            .slice(-ACTIVITY_MAX)
            .reverse()
            .map((e) =>
              h(
                "li",
                { class: `activity-${e.kind}` },
                h("span", { class: "activity-dot", dataset: { state: e.state ?? "" } }),
                h("span", { class: "activity-text" }, e.text),
                h("time", { class: "muted small", title: datetime(e.at) }, new Date(e.at).toLocaleTimeString()),
              ),
            )
        : h("li", { class: "muted" }, "No events yet."),
    );
  }

  // --- data -----------------------------------------------------------------------------------
  async function loadJob() {
    job = await api(base, { signal });
    renderJob();
    renderTrials();
  }

  async function loadTrials() {
    if (job?.kind !== "search") return;
    trials = await api(`${base}/trials`, { signal });
    renderTrials();
    scheduleDraw();
  }

  async function loadCheckpoints() {
    checkpoints = await api(`${base}/checkpoints`, { signal });
    packed.disabled = !checkpoints.some((c) => c.packed_url);
    onnx.disabled = !checkpoints.some((c) => c.onnx_url);
    full.disabled = !checkpoints.some((c) => c.full_url);
    packed.title = packed.disabled ? "no packed model yet" : "the latest packed 1-bit model (.safetensors)";
    onnx.title = onnx.disabled
      ? "no packed model yet"
      : "the latest packed model as ONNX, for ONNX Runtime, TensorRT or OpenVINO (made on the first download)";
    full.title = full.disabled ? "no checkpoint yet" : "the latest resumable training state";
  }

  async function loadSummary() {
    try {
      renderSummary(await api(`${base}/summary`, { signal }));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) renderSummary(null);
      else throw err;
    }
  }

  // Refreshes triggered by events are coalesced: a burst of events costs one request per resource.
  const pending = new Map();
  function refresh(name, loader, delayMs = 250) {
    if (pending.has(name)) return;
    pending.set(
      name,
      setTimeout(async () => {
        pending.delete(name);
        try {
          await loader();
        } catch (err) {
          if (!signal.aborted && err.status !== 401) error.show(`Could not refresh ${name}: ${err.message}`);
        }
      }, delayMs),
    );
  }
  signal.addEventListener("abort", () => {
    for (const timer of pending.values()) clearTimeout(timer);
    clearTimeout(drawTimer);
  });

  function onMessage({ event, data }) {
    const payload = data.data ?? {};
    if (event === "metric") {
      const key = payload.trial_key ?? "";
      if (!curves.has(key)) curves.set(key, new Map());
      curves.get(key).set(`${payload.phase}:${payload.epoch}`, {
        phase: payload.phase,
        epoch: payload.epoch,
        ...(payload.values ?? {}),
      });
      scheduleDraw();
      return;
    }
    if (event === "state") {
      if (job && data.to_state) {
        job.state = data.to_state;
        renderJob();
      }
      activity.push({
        kind: "state",
        state: data.to_state,
        at: data.created_at,
        text: data.from_state
          ? `${data.from_state} → ${data.to_state}`
          : `${data.to_state}` + (data.message ? ` (${data.message})` : ""),
      });
      refresh("job", loadJob);
    } else if (event === "checkpoint") {
      activity.push({ kind: "checkpoint", at: data.created_at, text: data.message || "checkpoint" });
      refresh("checkpoints", loadCheckpoints);
      refresh("summary", loadSummary, 600);
    } else if (event === "trial") {
      activity.push({
        kind: "trial",
        at: data.created_at,
        text: data.message || `trial ${payload.trial_key} ${payload.state}`,
      });
      refresh("trials", loadTrials);
    } else {
      activity.push({ kind: event, at: data.created_at, text: data.message || event });
    }
    renderActivity();
  }

  function onStatus(status) {
    live.dataset.status = status;
    setText(live, { live: "live", reconnecting: "reconnecting…", ended: "finished" }[status] ?? status);
  }

  // --- actions --------------------------------------------------------------------------------
  function askCancel() {
    showConfirm(true);
  }

  function showConfirm(on) {
    confirm.hidden = !on;
    cancel.classList.toggle("is-hidden", on);
  }

  async function doCancel() {
    showConfirm(false);
    cancel.disabled = true;
    try {
      job = await api(`${base}/cancel`, { method: "POST", signal });
      renderJob();
      note.el.dataset.about = "cancel";
      note.show(job.state === "cancelling" ? "Cancelling: waiting for Ray to stop the run…" : `Job ${job.state}.`);
    } catch (err) {
      error.show(`Cancel failed: ${err.message}`);
    } finally {
      cancel.disabled = false;
    }
  }

  async function fetchFile(format) {
    const button = { packed, onnx, full }[format];
    const label = button.textContent;
    button.disabled = true;
    button.textContent = "Downloading…";
    try {
      const suffix = { packed: "packed.safetensors", onnx: "onnx", full: "full" }[format];
      const file = await download(`${base}/checkpoints/latest?format=${format}`, `${id}.${suffix}`);
      note.el.dataset.about = "download";
      note.show(`Downloaded ${file.name} (${bytes(file.size)}).`);
    } catch (err) {
      error.show(`Download failed: ${err.message}`);
    } finally {
      button.textContent = label;
      button.disabled = false;
    }
  }

  // --- start ----------------------------------------------------------------------------------
  (async () => {
    try {
      await loadJob();
    } catch (err) {
      if (signal.aborted) return;
      error.show(err.status === 404 ? `Job ${id} not found.` : `Could not load the job: ${err.message}`);
      onStatus("ended");
      return;
    }
    drawCharts();
    renderActivity();
    await Promise.allSettled([loadTrials(), loadCheckpoints(), loadSummary()]);
    try {
      await follow(`${base}/events`, { onMessage, onStatus, signal, isDone: () => TERMINAL.has(job.state) });
    } catch (err) {
      if (!signal.aborted && err.status !== 401) error.show(`The event stream stopped: ${err.message}`);
      return;
    }
    if (signal.aborted) return;
    // The stream ends with the job: fetch the final state, trials, files and summary once more.
    await Promise.allSettled([loadJob(), loadTrials(), loadCheckpoints(), loadSummary()]);
    drawCharts();
  })();
}
