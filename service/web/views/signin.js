// Sign in: a token from `fsg token create`, checked against GET /v1/jobs before it is kept.

import { ApiError, setToken, verifyToken } from "../api.js";
import { banner, h } from "../dom.js";

export function signinView(root, { notice } = {}) {
  const input = h("input", {
    id: "token-input",
    type: "password",
    name: "token",
    placeholder: "fsg_…",
    autocomplete: "current-password",
    spellcheck: "false",
    required: true,
    dataset: { testid: "token-input" },
  });
  const error = banner("error", "signin-error");
  const note = banner("note", "signin-notice");
  if (notice) note.show(notice);
  const submit = h(
    "button",
    { type: "submit", class: "btn btn-primary btn-block", dataset: { testid: "signin-button" } },
    "Sign in",
  );

  async function onsubmit(event) {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    error.clear();
    note.clear();
    submit.disabled = true;
    submit.textContent = "Checking…";
    try {
      await verifyToken(token);
      setToken(token);
      location.hash = "#/jobs";
    } catch (err) {
      const refused = err instanceof ApiError && err.status === 401;
      error.show(
        refused
          ? `Token refused (401): ${err.message}. Check it, or create one with \`fsg token create\`.`
          : `Could not reach the API: ${err.message}`,
      );
      input.select();
    } finally {
      submit.disabled = false;
      submit.textContent = "Sign in";
    }
  }

  root.append(
    h(
      "div",
      { class: "signin" },
      h(
        "form",
        { id: "signin-form", class: "card signin-card", onsubmit, dataset: { testid: "signin-form" } },
        h("div", { class: "signin-logo" }, h("span", { class: "logo-mark" }, "±1"), h("span", {}, "fsg")),
        h("h1", {}, "Sign in to the dashboard"),
        h(
          "p",
          { class: "muted" },
          "Paste an API token. It is kept in this browser only (localStorage) and sent as a bearer token with every request.",
        ),
        note.el,
        error.el,
        h("label", { for: "token-input" }, "API token"),
        input,
        submit,
        h("p", { class: "hint" }, "No token yet? Run ", h("code", {}, "fsg token create"), " on the server."),
      ),
    ),
  );
  input.focus();
}
