// A few lines of DOM building: h("tag", {attrs}, ...children), and the shared pieces of every page.

/** An element: `class`, `dataset`, `on<event>` handlers, properties (checked, disabled) and attributes. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (typeof value !== "string" && key in el) el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...nodes(children));
  return el;
}

function nodes(children) {
  return children
    .flat(Infinity)
    .filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
}

/** Replace `el`'s children (and keep the element, its listeners and its place). */
export function fill(el, ...children) {
  el.replaceChildren(...nodes(children));
  return el;
}

/** Set `el`'s text only when it changed (no flicker, no lost selection while polling). */
export function setText(el, text) {
  const value = String(text ?? "");
  if (el.textContent !== value) el.textContent = value;
}

export const STATES = [
  "queued",
  "dispatching",
  "running",
  "cancelling",
  "retrying",
  "succeeded",
  "failed",
  "cancelled",
];
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** The coloured state badge; data-state carries the raw state for tests and CSS. */
export function badge(state, testid = "state") {
  return h("span", { class: `badge state-${state}`, dataset: { state, testid } }, state);
}

export function updateBadge(el, state) {
  if (el.dataset.state === state) return;
  el.dataset.state = state;
  el.className = `badge state-${state}`;
  el.textContent = state;
}

/** A banner for errors and notes, hidden while empty. */
export function banner(kind = "error", testid = "banner") {
  const el = h("div", { class: `banner banner-${kind}`, role: kind === "error" ? "alert" : "status", hidden: true });
  el.dataset.testid = testid;
  return {
    el,
    show(text) {
      setText(el, text);
      el.hidden = !text;
    },
    clear() {
      el.hidden = true;
      el.textContent = "";
    },
  };
}

/** A titled card (section) with optional actions at the right of its header. */
export function card(title, { id, actions = [], testid } = {}, ...body) {
  return h(
    "section",
    { class: "card", id, dataset: testid ? { testid } : undefined },
    h("header", { class: "card-head" }, h("h2", {}, title), h("div", { class: "card-actions" }, actions)),
    h("div", { class: "card-body" }, body),
  );
}
