// The REST API as the page uses it: the token (kept in localStorage), JSON calls that raise ApiError,
// and downloads fetched with the token and handed to the browser as object URLs.

const TOKEN_KEY = "fsg.token";

export const getToken = () => localStorage.getItem(TOKEN_KEY);
export const setToken = (token) => localStorage.setItem(TOKEN_KEY, token);
export const clearToken = () => localStorage.removeItem(TOKEN_KEY);

/** A 4xx/5xx answer; `message` is the server's detail in one line (it names the field). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(formatDetail(detail));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

function formatDetail(detail) {
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const loc = (item.loc || []).filter((p) => p !== "body" && p !== "query").join(".");
        return loc ? `${loc}: ${item.msg}` : String(item.msg ?? item);
      })
      .join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

export function authHeaders(token = getToken(), extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

/** The response itself when it is a success; otherwise an ApiError. A 401 also tells the app
 * (event `fsg:unauthorized`), which sends the user back to the sign-in form. */
export async function check(response, { announce401 = true } = {}) {
  if (response.ok) return response;
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    detail = body.detail ?? detail;
  } catch {
    // not JSON: keep the status line
  }
  const error = new ApiError(response.status, detail);
  if (response.status === 401 && announce401) {
    window.dispatchEvent(new CustomEvent("fsg:unauthorized", { detail: error.message }));
  }
  throw error;
}

/** `method path` with the stored token; the parsed JSON answer. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders(getToken(), body === undefined ? {} : { "Content-Type": "application/json" });
  const response = await fetch(path, {
    method,
    headers,
    signal,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  await check(response);
  return response.status === 204 ? null : response.json();
}

/** Whether `token` is accepted: GET /v1/jobs answers 401 to a wrong one (no app-wide sign-out here). */
export async function verifyToken(token) {
  const response = await fetch("/v1/jobs?limit=1", { headers: authHeaders(token), cache: "no-store" });
  await check(response, { announce401: false });
}

function filenameOf(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const star = /filename\*=(?:UTF-8'')?([^;]+)/i.exec(header);
  if (star) return decodeURIComponent(star[1].replace(/"/g, ""));
  const plain = /filename="?([^";]+)"?/i.exec(header);
  return plain ? plain[1] : fallback;
}

/** Download `path` with the token: fetch -> blob -> object URL -> a click on a temporary link. */
export async function download(path, fallbackName) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  await check(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: filenameOf(response, fallbackName) });
  document.body.append(link);
  link.click();
  link.remove();
  // The click has started the download by the time the next task runs; the URL is not needed after.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { name: link.download, size: blob.size };
}
