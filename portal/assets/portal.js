// The customer portal. Everything it shows comes from keygate's self-served
// routes, called from this page with the customer's own credential in the
// X-API-Key header (never in a URL). The credential is kept in
// sessionStorage: it survives a reload of this tab and is gone when the tab
// closes; it is never written to the browser's long-lived storage or a cookie.
"use strict";

(function () {
  const STORE = "keygate-portal";
  const BYTE_METERS = new Set(["pinned_bytes", "ingress", "egress"]);
  const NAMES = {
    requests: "Requests",
    pinned_count: "Pinned objects",
    pinned_bytes: "Pinned bytes",
    ingress: "Ingress",
    egress: "Egress",
    ipns: "IPNS names",
  };
  const $ = (id) => document.getElementById(id);

  // session is {cred, viaLogin}, or null when signed out.
  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(STORE) || "null");
      return s && typeof s.cred === "string" ? s : null;
    } catch (e) {
      return null;
    }
  }
  function saveSession(s) {
    if (s) sessionStorage.setItem(STORE, JSON.stringify(s));
    else sessionStorage.removeItem(STORE);
  }

  function showError(msg) {
    const el = $("error");
    el.textContent = msg;
    el.hidden = !msg;
  }

  // errorText turns any of the self-served routes' error shapes into a line.
  function errorText(status, body) {
    if (body && typeof body === "object") {
      const m = body.msg || body.message || body.statusMessage || body.detail || body.title;
      if (typeof m === "string" && m) return m + " (HTTP " + status + ")";
    }
    return "keygate answered HTTP " + status;
  }

  // api calls a self-served route and returns its decoded JSON answer, or
  // throws an Error whose message is fit for the page.
  async function api(method, path, opts) {
    opts = opts || {};
    const headers = {};
    if (opts.cred) headers["X-API-Key"] = opts.cred;
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.form) {
      body = new URLSearchParams(opts.form); // application/x-www-form-urlencoded
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit", redirect: "error" });
    } catch (e) {
      throw new Error("Cannot reach keygate: " + e.message);
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const err = new Error(errorText(resp.status, data));
      err.status = resp.status;
      throw err;
    }
    if (data === null) throw new Error("keygate answered " + path + " with something that is not JSON");
    return data;
  }

  function formatNumber(n) {
    return Number(n).toLocaleString("en-US");
  }
  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = Number(n);
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  // bar renders one usage line: a label, the figures and, when there is a
  // limit, a bar filled to the share used.
  function bar(id, name, used, limit, bytes) {
    const fmt = bytes ? formatBytes : formatNumber;
    const li = document.createElement("li");
    li.dataset.meter = id;
    const label = document.createElement("div");
    label.className = "label";
    const n = document.createElement("span");
    n.className = "name";
    n.id = "meter-" + id;
    n.textContent = name;
    const f = document.createElement("span");
    f.className = "figures";
    label.append(n, f);
    li.append(label);
    if (limit === null || limit === undefined) {
      f.textContent = fmt(used) + " used · no limit";
      return li;
    }
    const pct = limit > 0 ? Math.min(100, (used / limit) * 100) : 100;
    f.textContent = fmt(used) + " of " + fmt(limit) + " (" + (pct < 1 && used > 0 ? "<1" : Math.round(pct)) + "%)";
    const b = document.createElement("div");
    b.className = "bar" + (pct >= 100 ? " full" : pct >= 80 ? " high" : "");
    b.setAttribute("role", "progressbar");
    b.setAttribute("aria-labelledby", n.id);
    b.setAttribute("aria-valuemin", "0");
    b.setAttribute("aria-valuemax", String(limit));
    b.setAttribute("aria-valuenow", String(Math.min(used, limit)));
    b.setAttribute("aria-valuetext", f.textContent);
    const fill = document.createElement("span");
    fill.style.width = pct + "%";
    b.append(fill);
    li.append(b);
    return li;
  }

  function renderUsage(stats, account) {
    $("plan-line").textContent = "Organization " + stats.name + " · plan " + stats.plan;
    const reset = stats.period_resets_at;
    if (typeof reset === "number") {
      const when = new Date(reset * 1000);
      const days = Math.max(0, Math.ceil((when - Date.now()) / 86400000));
      $("reset-line").textContent = "The period resets on " + when.toUTCString() + " (in " + days + (days === 1 ? " day)" : " days)");
    } else {
      $("reset-line").textContent = "This plan’s usage never resets.";
    }
    const list = $("usage");
    list.replaceChildren();
    list.append(bar("requests", "Requests this period", stats.requests, stats.requests_limit, false));
    const k = account.api_key;
    if (k) {
      list.append(bar("key", "Requests of this key (" + k.name + ")", k.current_usage, k.max_api_requests, false));
    }
    for (const key of Object.keys(stats)) {
      if (key === "requests" || key.endsWith("_limit") || !(key + "_limit" in stats)) continue;
      list.append(bar(key, NAMES[key] || key, stats[key], stats[key + "_limit"], BYTE_METERS.has(key)));
    }
  }

  function renderKeys(keys, self) {
    const tbody = $("keys").tBodies[0];
    tbody.replaceChildren();
    for (const k of keys) {
      const tr = document.createElement("tr");
      tr.dataset.name = k.name;
      const name = document.createElement("td");
      name.textContent = k.name;
      const ak = document.createElement("td");
      const code = document.createElement("code");
      code.textContent = k.access_key;
      ak.append(code);
      const perms = document.createElement("td");
      perms.textContent = (k.permissions || []).join(", ");
      const act = document.createElement("td");
      if (self && k.access_key === self.uid) {
        act.textContent = "signed in with it";
      } else {
        const del = document.createElement("button");
        del.type = "button";
        del.className = "danger";
        del.textContent = "Delete";
        del.setAttribute("aria-label", "Delete key " + k.name);
        del.addEventListener("click", () => confirmDelete(k.name, del));
        act.append(del);
      }
      // Labels for the stacked layout of narrow screens (portal.css).
      name.dataset.label = "Name";
      ak.dataset.label = "Access key";
      perms.dataset.label = "Permissions";
      tr.append(name, ak, perms, act);
      tbody.append(tr);
    }
  }

  let current = null; // the signed-in key as /api/v1/account names it

  // load fetches and shows everything; it signs out when the credential no
  // longer works.
  async function load() {
    const s = loadSession();
    if (!s) return showSignIn();
    $("loading").hidden = false;
    try {
      const [account, stats] = await Promise.all([
        api("GET", "/api/v1/account", { cred: s.cred }),
        api("GET", "/api/v0/stats", { cred: s.cred }),
      ]);
      current = account.api_key || null;
      renderUsage(stats.data, account);
      $("who-text").textContent = "Signed in with key " + (current ? current.name : "?");
      $("who").hidden = false;
      $("signin").hidden = true;
      $("account").hidden = false;
      await loadKeys(s);
      showError("");
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        saveSession(null);
        showSignIn();
      }
      showError(e.message);
    } finally {
      $("loading").hidden = true;
    }
  }

  async function loadKeys(s) {
    try {
      const keys = await api("GET", "/api/v0/keys", { cred: s.cred });
      renderKeys(keys.data || [], current);
      $("keys-admin").hidden = false;
      $("keys-note").hidden = true;
    } catch (e) {
      $("keys-admin").hidden = true;
      if (e.status === 403) {
        $("keys-note").hidden = false;
        return;
      }
      throw e;
    }
  }

  // showSignIn shows the sign-in forms and drops whatever the last session
  // showed, so nothing of it stays in the page.
  function showSignIn() {
    $("usage").replaceChildren();
    $("keys").tBodies[0].replaceChildren();
    $("plan-line").textContent = "";
    $("reset-line").textContent = "";
    $("who-text").textContent = "";
    $("keys-admin").hidden = true;
    $("keys-note").hidden = true;
    $("who").hidden = true;
    $("account").hidden = true;
    $("signin").hidden = false;
    $("loading").hidden = true;
    hideSecret();
  }

  async function signInWithKey(ev) {
    ev.preventDefault();
    const input = $("key-input");
    const cred = input.value.trim();
    if (!cred) return;
    try {
      await api("GET", "/api/v1/account", { cred });
    } catch (e) {
      showError("Sign-in failed: " + e.message);
      return;
    }
    input.value = "";
    saveSession({ cred, viaLogin: false });
    showError("");
    await load();
  }

  async function signInWithPassword(ev) {
    ev.preventDefault();
    const user = $("username");
    const pass = $("password");
    let answer;
    try {
      answer = await api("POST", "/user/create_apikey", {
        form: { username: user.value, password: pass.value, access_level: "full", comment: "keygate portal sign-in" },
      });
    } catch (e) {
      showError("Sign-in failed: " + e.message);
      return;
    } finally {
      pass.value = "";
    }
    const cred = answer.data && answer.data.new_key;
    if (typeof cred !== "string") {
      showError("Sign-in failed: keygate gave no key");
      return;
    }
    user.value = "";
    saveSession({ cred, viaLogin: true });
    showError("");
    await load();
  }

  // signOut forgets the credential; a key made by a password sign-in is
  // deleted first, so it does not outlive the session.
  async function signOut() {
    const s = loadSession();
    if (s && s.viaLogin && current) {
      try {
        await api("DELETE", "/api/v0/key", { cred: s.cred, json: { name: current.name } });
      } catch (e) {
        if (e.status !== 401 && e.status !== 403) {
          showError("Signed out, but the session’s key " + current.name + " could not be deleted: " + e.message);
          saveSession(null);
          current = null;
          showSignIn();
          return;
        }
      }
    }
    saveSession(null);
    current = null;
    showError("");
    showSignIn();
    $("key-input").focus();
  }

  async function createKey(ev) {
    ev.preventDefault();
    const s = loadSession();
    if (!s) return showSignIn();
    const name = $("new-name").value.trim();
    const permissions = Array.from(document.querySelectorAll("#create-form input[name=perm]:checked"), (c) => c.value);
    if (permissions.length === 0) {
      showError("Pick at least one permission for the new key.");
      return;
    }
    let answer;
    try {
      answer = await api("POST", "/api/v0/key", { cred: s.cred, json: { name, permissions } });
    } catch (e) {
      showError("The key was not created: " + e.message);
      return;
    }
    showError("");
    $("new-name").value = "";
    $("new-secret-title").textContent = "Key " + name + " created. Copy its secret now: it is not shown again.";
    $("secret-value").value = answer.data.access_secret;
    $("copy-status").textContent = "";
    $("new-secret").hidden = false;
    $("secret-value").focus();
    $("secret-value").select();
    try {
      await loadKeys(s);
    } catch (e) {
      showError(e.message);
    }
  }

  function hideSecret() {
    $("secret-value").value = "";
    $("new-secret-title").textContent = "";
    $("copy-status").textContent = "";
    $("new-secret").hidden = true;
  }

  async function copySecret() {
    const v = $("secret-value").value;
    try {
      await navigator.clipboard.writeText(v);
      $("copy-status").textContent = "Copied to the clipboard.";
    } catch (e) {
      $("secret-value").select();
      $("copy-status").textContent = "The browser refused the clipboard: the secret is selected, press Ctrl+C (⌘C) to copy it.";
    }
  }

  let pendingDelete = null;

  function confirmDelete(name, button) {
    pendingDelete = { name, button };
    $("confirm-text").textContent = "Delete key " + name + "? Requests with it are refused from now on; this cannot be undone.";
    $("confirm").showModal();
    $("confirm-cancel").focus();
  }

  async function doDelete() {
    const p = pendingDelete;
    pendingDelete = null;
    $("confirm").close();
    const s = loadSession();
    if (!p || !s) return;
    try {
      await api("DELETE", "/api/v0/key", { cred: s.cred, json: { name: p.name } });
      showError("");
      await loadKeys(s);
      $("keys-title").focus();
    } catch (e) {
      showError("The key was not deleted: " + e.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", signInWithKey);
    $("login-form").addEventListener("submit", signInWithPassword);
    $("signout").addEventListener("click", signOut);
    $("refresh").addEventListener("click", load);
    $("create-form").addEventListener("submit", createKey);
    $("copy").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", hideSecret);
    $("confirm-cancel").addEventListener("click", () => $("confirm").close());
    $("confirm-delete").addEventListener("click", doDelete);
    $("confirm").addEventListener("close", () => {
      if (pendingDelete && pendingDelete.button) pendingDelete.button.focus();
      pendingDelete = null;
    });
    $("keys-title").tabIndex = -1;
    load();
  });
})();
