// The dashboard's entry point: hash routes (#/signin, #/jobs, #/jobs/<id>, #/compare?job=..&job=..,
// #/studies/<id>),
// the top bar, and the sign-out that a 401 from any call triggers.

import { clearToken, getToken } from "./api.js";
import { h } from "./dom.js";
import { compareView } from "./views/compare.js";
import { jobView } from "./views/job.js";
import { jobsView } from "./views/jobs.js";
import { signinView } from "./views/signin.js";
import { studyView } from "./views/study.js";

const ROUTES = [
  { pattern: /^\/signin$/, view: signinView, nav: null, open: true },
  { pattern: /^\/jobs$/, view: jobsView, nav: "jobs" },
  { pattern: /^\/jobs\/([^/]+)$/, view: jobView, nav: "jobs" },
  { pattern: /^\/compare$/, view: compareView, nav: "compare" },
  { pattern: /^\/studies\/([^/]+)$/, view: studyView, nav: "jobs" },
];

let current = null; // the AbortController of the page on screen: aborting it stops its polls and streams
let notice = null; // shown once on the sign-in form (why the user was sent there)

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, search = ""] = raw.split("?");
  return { path, query: new URLSearchParams(search) };
}

function render() {
  current?.abort();
  current = new AbortController();
  const { path, query } = parseHash();
  const route = ROUTES.find((r) => r.pattern.test(path));
  if (!route) {
    location.replace("#/jobs");
    return;
  }
  const signedIn = Boolean(getToken());
  if (!route.open && !signedIn) {
    location.replace("#/signin");
    return;
  }
  document.body.dataset.route = path.split("/")[1];
  for (const link of document.querySelectorAll("[data-nav]"))
    link.classList.toggle("active", link.dataset.nav === route.nav);
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("topnav").hidden = !signedIn;
  document.title = "fsg dashboard";
  const root = document.getElementById("view");
  root.replaceChildren();
  const params = route.pattern.exec(path).slice(1);
  route.view(root, { params, query, signal: current.signal, notice });
  notice = null;
}

window.addEventListener("fsg:unauthorized", (event) => {
  if (!getToken()) return;
  clearToken();
  notice = `Signed out: the API refused the token (${event.detail}).`;
  if (location.hash === "#/signin") render();
  else location.hash = "#/signin";
});

window.addEventListener("hashchange", render);

document.getElementById("signout").addEventListener("click", () => {
  clearToken();
  location.hash = "#/signin";
});

document
  .getElementById("brand")
  .append(
    h("span", { class: "logo-mark" }, "±1"),
    h("span", { class: "brand-name" }, "fsg"),
    h("span", { class: "brand-sub" }, "BNN training"),
  );

render();
