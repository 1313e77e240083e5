// The relayctl console: plain ES module, no build step. It calls only the documented
// management API (/api/0/, see /api/0/openapi.json) and the console's session routes
// (/console/session). The session cookie is HttpOnly; every change sends X-CSRF-Token.

const session = { csrf: null, username: null, scopes: [] };
const main = document.getElementById("main");

// -- DOM helpers -------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let uid = 0;
function field(label, name, control) {
  const id = `f${++uid}`;
  control.id = id;
  control.name = name;
  const error = h("p", { class: "error", id: `${id}-error`, "data-error-for": name });
  control.setAttribute("aria-describedby", error.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, error);
}

function say(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { status.textContent = ""; }, 4000);
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const yesNo = (value) => h("span", { class: value ? "yes" : "no" }, value ? "yes" : "no");
const table = (heads, rows) => h("div", { class: "table-wrap" },
  h("table", {}, h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows)));
const enc = encodeURIComponent;

// -- the API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, data) {
    super(typeof data?.detail === "string" ? data.detail : `HTTP ${status}`);
    this.status = status;
    this.data = data;
  }
}

// A failure of the network (the gateway unreachable) reads like any other error.
function asApiError(error) {
  return error instanceof ApiError ? error : new ApiError(0, { detail: `The gateway cannot be reached (${error.message}).` });
}

async function call(method, path, body, extra = {}) {
  const headers = { Accept: "application/json", ...extra };
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, credentials: "same-origin",
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (response.status === 401 && path.startsWith("/api/0/")) {
    session.csrf = null;
    showLogin("Your session has ended; log in again.");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return { data, response };
}

async function api(method, path, body, extra = {}) {
  return (await call(method, path, body, extra)).data;
}

// A list and its pages: Sentry's Link header, `<url>; rel="next"; results="true"; cursor="0:2:0"`.
async function apiPage(path) {
  const { data, response } = await call("GET", path);
  const cursors = {};
  for (const part of (response.headers.get("Link") || "").split(",")) {
    const rel = part.match(/rel="([^"]+)"/)?.[1];
    const cursor = part.match(/cursor="([^"]+)"/)?.[1];
    if (rel && cursor && /results="true"/.test(part)) cursors[rel] = cursor;
  }
  return { items: data, next: cursors.next || null, previous: cursors.previous || null };
}

// Field errors (Sentry's {field: [messages]}) next to their fields (by name); anything else at the form's end.
function showErrors(form, error) {
  for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const general = form.querySelector(".form-error");
  if (!error) return;
  const data = error.data;
  const rest = [];
  const fieldShaped = data && typeof data === "object" && !Array.isArray(data) && !("detail" in data)
    && Object.values(data).every(Array.isArray);
  if (error.status < 500 && fieldShaped) {
    for (const [name, messages] of Object.entries(data)) {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      const text = Array.isArray(messages) ? messages.join(" ") : String(messages);
      if (slot) {
        slot.textContent = text;
        form.querySelector(`[name="${CSS.escape(name)}"]`)?.setAttribute("aria-invalid", "true");
      } else rest.push(`${name}: ${text}`);
    }
  } else rest.push(error.message);
  if (general) general.textContent = rest.join(" ");
  (form.querySelector("[aria-invalid=true]") || general)?.focus?.();
}

function actionForm(children, submitLabel, run) {
  const form = h("form", { novalidate: true }, children, h("button", { type: "submit" }, submitLabel),
    h("p", { class: "error form-error", tabindex: "-1", role: "alert" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showErrors(form, null);
    try { await run(new FormData(form), form); } catch (error) { showErrors(form, asApiError(error)); }
  });
  return form;
}

// A button that asks once more before it acts ("Delete" then "Really delete?").
function confirmButton(label, run) {
  const button = h("button", { type: "button", class: "danger" }, label);
  button.addEventListener("click", async () => {
    if (!button.dataset.armed) {
      button.dataset.armed = "1";
      button.textContent = `Really ${label.toLowerCase()}?`;
      return;
    }
    button.disabled = true;
    try { await run(button); } catch (error) { button.disabled = false; say(error.message); }
  });
  return button;
}

// A delete answers 204 with no sequence to read at: the row goes here, not by a re-read
// that might not show the delete yet.
function removeRow(button, emptyText) {
  const row = button.closest("tr");
  const wrap = row.closest(".table-wrap");
  row.remove();
  if (!wrap.querySelector("tbody tr")) wrap.replaceWith(h("p", { class: "muted" }, emptyText));
}

// -- login -------------------------------------------------------------------------------------

function showLogin(message = "") {
  closeLive();
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", autocomplete: "off", required: true });
  const form = actionForm([field("API token", "token", input)], "Log in", async (data) => {
    const token = String(data.get("token") || "").trim();
    if (!token) throw new ApiError(400, { token: ["This field is required."] });
    const answer = await api("POST", "/console/session", undefined, { Authorization: `Bearer ${token}` });
    session.csrf = answer.csrf;
    await started();
  });
  main.replaceChildren(h("h1", {}, "Log in"),
    h("p", {}, "Log in with an API token (", h("code", {}, "relayctl token create USER"), ")."),
    message ? h("p", { class: "error", role: "alert" }, message) : null, form);
  input.focus();
}

async function started() {
  const index = await api("GET", "/api/0/");
  session.username = index.user?.username;
  session.scopes = index.auth?.scopes || [];
  document.getElementById("who").textContent = session.username || "";
  document.getElementById("nav").hidden = false;
  await route();
}

document.getElementById("logout").addEventListener("click", async () => {
  closeLive();
  try { await api("DELETE", "/console/session"); } catch (error) { say(error.message); }
  session.csrf = null;
  location.hash = "#/orgs";
  showLogin("Logged out.");
});

// -- pages -------------------------------------------------------------------------------------

async function orgsPage() {
  const orgs = await api("GET", "/api/0/organizations/");
  const rows = orgs.map((o) => h("tr", {}, h("td", {}, h("a", { href: `#/org/${enc(o.slug)}` }, o.name)),
    h("td", {}, o.slug), h("td", {}, when(o.dateCreated))));
  const form = actionForm([field("Name", "name", h("input", { type: "text" })),
                           field("Slug (optional)", "slug", h("input", { type: "text" }))],
  "Create organization", async (data) => {
    const body = { name: data.get("name") };
    if (data.get("slug")) body.slug = data.get("slug");
    const org = await api("POST", "/api/0/organizations/", body);
    say(`Organization ${org.slug} created`);
    location.hash = `#/org/${enc(org.slug)}`;
  });
  return [h("h1", {}, "Organizations"),
    h("section", {}, h("h2", {}, "Yours"), orgs.length ? table(["Name", "Slug", "Created"], rows)
      : h("p", { class: "muted" }, "No organization is visible to this token.")),
    h("section", {}, h("h2", {}, "New organization"),
      h("p", { class: "muted" }, "Superusers and relayctl.admin only. Organizations cannot be disabled or deleted through the API."),
      form)];
}

// `known`: the org as a write just answered it (read at that write), instead of a new read.
async function orgPage(org, known = null) {
  const [detail, projects] = await Promise.all([known || api("GET", `/api/0/organizations/${enc(org)}/`),
                                                api("GET", `/api/0/organizations/${enc(org)}/projects/`)]);
  const update = async (body, message) => {
    const answer = await api("PUT", `/api/0/organizations/${enc(org)}/`, body);
    say(message);
    main.replaceChildren(...await orgPage(org, answer));
  };
  const rows = projects.map((p) => h("tr", {},
    h("td", {}, h("a", { href: `#/project/${enc(org)}/${enc(p.slug)}` }, p.name)), h("td", {}, p.slug),
    h("td", {}, (p.teams || []).map((t) => t.slug).join(", ")), h("td", {}, p.platform || "—"),
    h("td", {}, confirmButton("Delete", async (button) => {
      await api("DELETE", `/api/0/projects/${enc(org)}/${enc(p.slug)}/`);
      say(`Project ${p.slug} deleted`);
      removeRow(button, "No projects yet.");
    }))));
  const teams = h("select", {}, detail.teams.map((t) => h("option", { value: t.slug }, t.name || t.slug)));
  const create = actionForm([field("Name", "name", h("input", { type: "text" })),
                             field("Slug (optional)", "slug", h("input", { type: "text" })),
                             field("Team", "team", teams)],
  "Create project", async (data) => {
    const body = { name: data.get("name") };
    if (data.get("slug")) body.slug = data.get("slug");
    const created = await api("POST", `/api/0/teams/${enc(org)}/${enc(data.get("team"))}/projects/`, body);
    say(`Project ${created.slug} created`);
    location.hash = `#/project/${enc(org)}/${enc(created.slug)}`;
  });
  const teamForm = actionForm([field("Team name", "name", h("input", { type: "text" })),
                               field("Slug (optional)", "slug", h("input", { type: "text" }))],
  "Create team", async (data) => {
    const body = { name: data.get("name") };
    if (data.get("slug")) body.slug = data.get("slug");
    await api("POST", `/api/0/organizations/${enc(org)}/teams/`, body);
    say("Team created");
    await route();
  });
  const trusted = detail.trustedRelays || [];
  const trustRows = trusted.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, h("code", {}, r.publicKey)),
    h("td", {}, confirmButton("Remove", async () => {
      await update({ trustedRelays: trusted.filter((x) => x.publicKey !== r.publicKey) }, "Relay no longer trusted");
    }))));
  const trustForm = actionForm([field("Relay public key", "trustedRelays", h("input", { type: "text" })),
                                field("Name", "relayName", h("input", { type: "text" }))],
  "Trust relay", async (data) => {
    await update({ trustedRelays: [...trusted, { publicKey: String(data.get("trustedRelays")).trim(),
                                                 name: data.get("relayName") || "relay" }] }, "Relay trusted");
  });
  return [h("h1", {}, detail.name, " ", h("span", { class: "muted" }, `(${detail.slug})`)),
    h("section", {}, h("h2", {}, "Projects"), projects.length
      ? table(["Name", "Slug", "Teams", "Platform", ""], rows) : h("p", { class: "muted" }, "No projects yet."),
    h("h2", {}, "New project"), create),
    h("section", {}, h("h2", {}, "Teams"),
      table(["Name", "Slug", ""], detail.teams.map((t) => h("tr", {}, h("td", {}, t.name), h("td", {}, t.slug),
        h("td", {}, t.slug === org ? h("span", { class: "muted" }, "default team")
          : confirmButton("Delete", async (button) => {
            await api("DELETE", `/api/0/teams/${enc(org)}/${enc(t.slug)}/`);
            say(`Team ${t.slug} deleted`);
            removeRow(button, "No teams.");
          }))))), teamForm),
    h("section", {}, h("h2", {}, "Trusted relays"), trusted.length
      ? table(["Name", "Public key", ""], trustRows) : h("p", { class: "muted" }, "None."), trustForm)];
}

async function projectPage(org, project) {
  const base = `/api/0/projects/${enc(org)}/${enc(project)}`;
  const [detail, keys, sources] = await Promise.all([api("GET", `${base}/`), api("GET", `${base}/keys/`),
    api("GET", `${base}/relayctl/options/`)]);
  const rows = keys.map((k) => {
    // The PUT answers with the key read at its write: the row shows that answer.
    const status = h("td", {}, k.isActive ? "active" : "disabled");
    const toggle = h("button", { type: "button", class: "secondary" }, k.isActive ? "Disable" : "Enable");
    toggle.addEventListener("click", async () => {
      try {
        k = await api("PUT", `${base}/keys/${enc(k.id)}/`, { isActive: !k.isActive });
        status.textContent = k.isActive ? "active" : "disabled";
        toggle.textContent = k.isActive ? "Disable" : "Enable";
        say(`Key ${k.isActive ? "enabled" : "disabled"}`);
      } catch (error) { say(error.message); }
    });
    return h("tr", {},
    h("td", {}, h("a", { href: `#/key/${enc(org)}/${enc(project)}/${enc(k.id)}` }, k.name || k.label)),
    h("td", {}, h("code", {}, k.public)), status,
    h("td", { class: "actions" }, toggle,
      confirmButton("Delete", async (button) => {
        await api("DELETE", `${base}/keys/${enc(k.id)}/`);
        say("Key deleted");
        removeRow(button, "No keys yet.");
      })));
  });
  const create = actionForm([field("Key name", "name", h("input", { type: "text" }))], "Create key", async (data) => {
    const key = await api("POST", `${base}/keys/`, { name: data.get("name") || undefined });
    say(`Key ${key.public} created`);
    await route();
  });
  return [h("h1", {}, detail.name, " ", h("span", { class: "muted" }, `(${org} / ${detail.slug})`)),
    h("p", {}, h("a", { href: `#/org/${enc(org)}` }, `← ${detail.organization?.name || org}`), " · ",
      h("a", { href: `#/events/${enc(org)}/${enc(project)}` }, "Recent events")),
    h("section", {}, h("h2", {}, "Keys"), keys.length ? table(["Name", "Public key", "Status", ""], rows)
      : h("p", { class: "muted" }, "No keys yet."), h("h2", {}, "New key"), create),
    aiSection(org, project),
    h("section", { id: "options" }, h("h2", {}, "Options"),
      h("p", { class: "muted" }, "Every project option of the catalogue: its type and default, the value of the "
        + (sources.template ? `project template “${sources.template}”` : "project template (this project has none)")
        + " and of the organization, this project's own, and the value its config is built from with where it "
        + "comes from. Unset a project value to inherit again."),
      sources.options.map((entry) => optionEditor(base, entry, sources.template)))];
}

// -- an event's AI fix suggestion, streamed as the model writes ------------------------------------

function aiSection(org, project, eventId = "") {
  const out = h("pre", { class: "suggestion", "aria-live": "polite", "aria-label": "AI fix suggestion" });
  const state = h("p", { class: "muted", id: "ai-state" });
  const form = actionForm([field("Event ID", "event_id", h("input", { type: "text", autocomplete: "off", value: eventId })),
    h("label", {}, h("input", { type: "checkbox", name: "consent", value: "yes" }), " I consent (policy individual_consent)"),
    h("label", {}, h("input", { type: "checkbox", name: "pii_certified", value: "yes" }), " No PII (policy pii_certification_required)")],
  "Suggest a fix", async (data) => {
    const eventId = String(data.get("event_id") || "").trim().replaceAll("-", "");
    if (!/^[0-9a-f]{32}$/i.test(eventId)) throw new ApiError(400, { event_id: ["An event ID is 32 hex digits."] });
    const query = new URLSearchParams({ stream: "yes" });
    for (const name of ["consent", "pii_certified"]) if (data.get(name)) query.set(name, "yes");
    out.textContent = "";
    state.textContent = "Asking the model…";
    await streamSuggestion(`/api/0/projects/${enc(org)}/${enc(project)}/events/${eventId}/ai-fix-suggest/?${query}`, out, state);
  });
  return h("section", { id: "events" }, h("h2", {}, eventId ? "AI fix suggestion" : "Events: AI fix suggestion"),
    eventId ? null : h("p", { class: "muted" }, "Any stored event of this project by its ID; or pick one from ",
      h("a", { href: `#/events/${enc(org)}/${enc(project)}` }, "the recent events"), "."),
    form, state, out);
}

async function streamSuggestion(url, out, state) {
  const response = await fetch(url, { headers: { Accept: "text/event-stream" }, credentials: "same-origin" });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    state.textContent = "";
    if (data?.restriction) throw new ApiError(response.status, { detail: `Refused by the organization's AI policy: ${data.restriction}` });
    throw new ApiError(response.status, data && typeof data.detail === "string" ? data : { detail: `HTTP ${response.status}` });
  }
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    out.textContent = await response.text();  // a cached answer comes whole
    state.textContent = "Done (from the cache).";
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const lines = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        const rest = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (key === "event") name = rest;
        else if (key === "data") lines.push(rest);
      }
      if (name === "message") {
        out.textContent += lines.join("\n");
        state.textContent = "The model is writing…";
      } else if (name === "done") {
        state.textContent = "Done.";
      } else if (name === "error") {
        let problem = {};
        try { problem = JSON.parse(lines.join("\n")); } catch { problem = {}; }
        state.textContent = `The model stopped: ${problem.error || "error"}`;
      }
    }
  }
}

function shown(value) {
  return value === undefined ? "—" : JSON.stringify(value, null, 1);
}

function inputFor(spec, value) {
  if (spec.kind === "boolean" || spec.kind === "toggle") {
    const [on, off] = spec.kind === "boolean" ? ["true", "false"] : ["1", "0"];
    const current = String(value ?? spec.default);
    return h("select", {}, h("option", { value: on, selected: current === on }, `${on} (on)`),
      h("option", { value: off, selected: current === off }, `${off} (off)`));
  }
  if (spec.kind === "lines") {
    const area = h("textarea", { rows: 3 });
    area.value = Array.isArray(value) ? value.join("\n") : (value ?? "");
    return area;
  }
  if (spec.kind === "text") {
    return h("input", { type: "text", value: typeof value === "string" ? value : (value === undefined || value === null ? "" : JSON.stringify(value)) });
  }
  const area = h("textarea", { rows: 3 });
  area.value = value === undefined || value === null ? "" : JSON.stringify(value, null, 1);
  return area;
}

function valueOf(spec, raw) {
  if (spec.kind === "boolean") return raw === "true";
  if (spec.kind === "toggle" || spec.kind === "lines") return raw;
  if (spec.kind === "text") return raw.trim().startsWith("[") ? JSON.parse(raw) : raw;
  return raw.trim() === "" ? null : JSON.parse(raw);
}

// Where the value an option's config is built from comes from, in words.
function sourceText(entry, template) {
  if (entry.forcedBy) return `the organization: ${entry.forcedBy} forces it on`;
  const named = template ? `template “${template}”` : "the template";
  return { project: "this project", template: named, org: "the organization", default: "the default",
           "org+project": "the organization's, then this project's", "org+template": `the organization's, then ${named}'s` }[entry.source]
    || entry.source;
}

// One place an option may be set (template, org, project): its value, "not set", or hidden.
function layerText(layer, readable) {
  if (!layer?.isSet) return "not set";
  return readable ? shown(layer.value) : "set (value not shown: needs project:write)";
}

// The value a project edit starts from: its own, else its template's, else the default (never
// the organization's part of a merged option: saving that would copy it into the project).
function startingValue(entry) {
  if (!entry.readable) return undefined;
  if (entry.project?.isSet) return entry.project.value;
  if (entry.template?.isSet) return entry.template.value;
  return entry.default;
}

function optionFacts(entry, template) {
  const combined = { append: "the organization's entries come first", union: "merged with the organization's",
                     pii: "the organization's rules apply first", fallback: "the organization's when the project sets none" };
  return [h("dt", {}, "Type"), h("dd", {}, entry.type), h("dt", {}, "Default"), h("dd", {}, shown(entry.default)),
    h("dt", {}, template ? `Template “${template}”` : "Template"),
    h("dd", { "data-layer": "template" }, template ? layerText(entry.template, entry.readable) : "no template"),
    entry.org ? [h("dt", {}, "Organization"), h("dd", { "data-layer": "org" }, layerText(entry.org, entry.readable)
      + (entry.combine ? ` (${combined[entry.combine]})` : ""))] : null,
    h("dt", {}, "This project"), h("dd", { "data-layer": "project" }, layerText(entry.project, entry.readable)),
    h("dt", {}, "Value now"), h("dd", { "data-layer": "value" }, entry.readable ? shown(entry.value) : "not shown"),
    h("dt", {}, "From"), h("dd", { class: "source", "data-source": entry.source }, sourceText(entry, template))];
}

function optionEditor(base, entry, template) {
  const facts = h("dl", {}, optionFacts(entry, template));
  let control = inputFor(entry, startingValue(entry));
  const form = actionForm([field(`Value of ${entry.key}`, entry.key, control)], "Save", async (data) => {
    let wanted;
    try { wanted = valueOf(entry, data.get(entry.key)); } catch (error) {
      throw new ApiError(400, { [entry.key]: [`Not valid JSON: ${error.message}`] });
    }
    await save(wanted);
  });
  const reset = h("button", { type: "button", class: "secondary" }, "Unset (inherit)");
  reset.disabled = !entry.project?.isSet;
  // The PUT stores the project's value (null clears it); the sources are then read again:
  // the API answers at the write's sequence, so the read shows it.
  async function save(wanted) {
    await api("PUT", `${base}/`, { options: { [entry.key]: wanted } });
    const sources = await api("GET", `${base}/relayctl/options/`);
    const now = sources.options.find((o) => o.key === entry.key);
    if (now) {
      entry = now;
      facts.replaceChildren(...optionFacts(entry, sources.template).flat(Infinity).filter(Boolean));
      reset.disabled = !entry.project?.isSet;
      if (wanted === null) {
        const fresh = inputFor(entry, startingValue(entry));
        fresh.id = control.id;
        fresh.name = control.name;
        fresh.setAttribute("aria-describedby", control.getAttribute("aria-describedby"));
        control.replaceWith(fresh);
        control = fresh;
      }
    }
    say(wanted === null ? `${entry.key} unset` : `${entry.key} saved`);
  }
  reset.addEventListener("click", async () => {
    showErrors(form, null);
    try { await save(null); } catch (error) { showErrors(form, asApiError(error)); }
  });
  form.querySelector("button[type=submit]").after(reset);
  return h("div", { class: "option", "data-option": entry.key }, h("h3", {}, entry.key), facts, form);
}

// -- a key's config and history -----------------------------------------------------------------

function stable(value) {
  if (Array.isArray(value)) return value.map(stable);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, stable(value[k])]));
  }
  return value;
}

// What the history's events say, folded: options by key, every other event's fields by kind.
function fold(state, event) {
  const next = structuredClone(state);
  const payload = { ...(event.payload || {}) };
  const kind = event.type.replace(/[A-Z][a-z]*$/, "") || event.type;
  if (typeof payload.key === "string" && /Option/.test(event.type)) {
    next.options ||= {};
    if (/Unset|Removed/.test(event.type)) delete next.options[payload.key];
    else next.options[payload.key] = payload.value;
  } else {
    const flags = /Disabled$/.test(event.type) ? { active: false } : /Enabled$/.test(event.type) ? { active: true }
      : /Deleted$/.test(event.type) ? { deleted: true } : {};
    next[kind] = { ...(next[kind] || {}), ...payload, ...flags };
  }
  return next;
}

// A line diff (longest common subsequence) with one line of context around each change.
function diffLines(before, after) {
  const a = before.split("\n"), b = after.split("\n");
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) out.push(["-", a[i++]]);
    else out.push(["+", b[j++]]);
  }
  const keep = out.map((line, k) => line[0] !== " " || [k - 1, k + 1].some((x) => out[x] && out[x][0] !== " "));
  return out.filter((_, k) => keep[k]);
}

async function keyPage(org, project, keyId) {
  const base = `/api/0/projects/${enc(org)}/${enc(project)}/keys/${enc(keyId)}`;
  const [key, config, history] = await Promise.all([api("GET", `${base}/`), api("GET", `${base}/config/`),
                                                    api("GET", `${base}/history/`)]);
  let state = {};
  const revisions = history.map((event) => {
    const before = JSON.stringify(stable(state), null, 2);
    state = fold(state, event);
    const lines = diffLines(before, JSON.stringify(stable(state), null, 2));
    return h("article", { class: "revision", "data-sequence": event.sequence },
      h("h3", {}, `#${event.sequence} ${event.type}`),
      h("p", { class: "muted" }, "by ", h("strong", { class: "actor" }, event.actor), " at ", when(event.dateCreated)),
      h("pre", { class: "diff", "aria-label": `Changes made by event ${event.sequence}` },
        lines.length ? lines.map(([mark, text]) => h("span", { class: mark === "+" ? "add" : mark === "-" ? "del" : "ctx" },
          `${mark} ${text}`)) : "(no change)"));
  }).reverse();
  const limitNow = h("p", { id: "rate-limit" });
  const showLimit = (k) => {
    limitNow.textContent = k.rateLimit ? `Now: ${k.rateLimit.count} events per ${k.rateLimit.window} s` : "Now: no limit";
  };
  showLimit(key);
  const number = (raw) => (/^\d+$/.test(raw) ? Number(raw) : raw);
  const settings = actionForm([field("Name", "name", h("input", { type: "text", value: key.name || "" })),
    field("Rate limit: events", "count", h("input", { type: "text", inputmode: "numeric", value: key.rateLimit?.count ?? "" })),
    field("per seconds", "window", h("input", { type: "text", inputmode: "numeric", value: key.rateLimit?.window ?? "" }))],
  "Save key", async (data, form) => {
    const count = String(data.get("count")).trim(), window = String(data.get("window")).trim();
    const body = { name: data.get("name") || undefined,
                   rateLimit: count || window ? { count: number(count), window: number(window) } : null };
    let answer;
    try { answer = await api("PUT", `${base}/`, body); } catch (error) {
      // the API names the whole rateLimit: show it under both of its fields
      if (error instanceof ApiError && error.data?.rateLimit) error.data = { count: error.data.rateLimit, window: [] };
      throw error;
    }
    showLimit(answer);
    say("Key saved");
    form.querySelector(".form-error").textContent = "";
  });
  return [h("h1", {}, `Key ${key.name || key.label}`),
    h("p", {}, h("a", { href: `#/project/${enc(org)}/${enc(project)}` }, `← ${project}`)),
    h("section", {}, h("h2", {}, "DSN"), h("pre", {}, key.dsn?.public || "")),
    h("section", { id: "key-settings" }, h("h2", {}, "Name and rate limit"), limitNow, settings),
    h("section", {}, h("h2", {}, "Config served now"), h("pre", { id: "config" }, JSON.stringify(config, null, 2))),
    h("section", {}, h("h2", {}, "History (newest first)"),
      h("p", { class: "muted" }, "Each event that shaped this key's config, with who and when, as a diff of what "
        + "the events say against the state before it."), revisions)];
}

async function relaysPage() {
  const relays = await api("GET", "/api/0/relayctl/relays/");
  const orgs = await api("GET", "/api/0/organizations/");
  const trustedBy = {};
  const details = await Promise.all(orgs.slice(0, 50).map((o) => api("GET", `/api/0/organizations/${enc(o.slug)}/`)));
  for (const detail of details) {
    for (const r of detail.trustedRelays || []) (trustedBy[r.publicKey] ||= []).push(detail.slug);
  }
  const heads = ["Relay id", "Public key", "Version", "First seen", "Last seen", "Internal", "Trusted by", "Banned", ""];
  const list = h("div", {});
  // The ban answers 204 with no sequence to read at: the row shows the ban itself.
  const row = (r) => {
    const banned = h("td", { class: "banned" }, yesNo(r.banned));
    const internal = h("td", { class: "internal" }, yesNo(r.internal));
    const ban = r.banned ? h("span", { class: "muted" }, "banned") : confirmButton("Ban", async (button) => {
      await api("DELETE", `/api/0/relayctl/relays/${enc(r.publicKey)}/`);
      say(`Relay ${r.publicKey.slice(0, 8)}… banned`);
      banned.replaceChildren(yesNo(true));
      internal.replaceChildren(yesNo(false));  // a ban also ends a relay's internal access
      button.replaceWith(h("span", { class: "muted" }, "banned"));
    });
    return h("tr", { "data-relay": r.publicKey }, h("td", {}, r.relayId || "—"), h("td", {}, h("code", {}, r.publicKey)),
      h("td", {}, r.version || "—"), h("td", {}, when(r.firstSeen)), h("td", {}, when(r.lastSeen)),
      internal, h("td", {}, (trustedBy[r.publicKey] || []).join(", ") || "—"), banned,
      h("td", {}, ban));
  };
  const show = () => list.replaceChildren(relays.length ? table(heads, relays.map(row))
    : h("p", { class: "muted" }, "No relays."));
  show();
  // The POST answers the relay read at its write: the list takes that answer.
  const allow = actionForm([field("Relay public key", "publicKey", h("input", { type: "text", autocomplete: "off" })),
    h("label", {}, h("input", { type: "checkbox", name: "internal", value: "yes" }),
      " Internal (may fetch every project's config)")],
  "Allow relay", async (data, form) => {
    const answer = await api("POST", "/api/0/relayctl/relays/",
                             { publicKey: String(data.get("publicKey") || "").trim(), internal: data.get("internal") === "yes" });
    const at = relays.findIndex((r) => r.publicKey === answer.publicKey);
    if (at >= 0) relays[at] = answer; else relays.push(answer);
    show();
    form.reset();
    say(`Relay ${answer.publicKey.slice(0, 8)}… allowed`);
  });
  return [h("h1", {}, "Relays"), h("section", {}, h("h2", {}, "Allowed and registered"), list,
    h("p", { class: "muted" }, "A banned relay is refused from its next request on and stays listed. "
      + "An organization trusts a relay on its page.")),
  h("section", { id: "allow-relay" }, h("h2", {}, "Allow a relay"),
    h("p", { class: "muted" }, "Superusers and relayctl.admin only."), allow)];
}

// -- live: configs going live, as the API streams them -------------------------------------------

// The Live page's EventSource (GET /api/0/relayctl/config-changes/, the session cookie
// sent with it): closed when another page is shown or the user logs out.
let live = null;
const LIVE_ROWS = 200;

function closeLive() {
  if (live) live.close();
  live = null;
}

function livePage() {
  const rows = h("tbody", {});
  const state = h("p", { id: "live-state", class: "muted", role: "status" }, "Connecting…");
  const source = new EventSource("/api/0/relayctl/config-changes/");
  live = source;
  const add = (row) => {
    rows.prepend(row);
    while (rows.children.length > LIVE_ROWS) rows.lastElementChild.remove();
  };
  source.addEventListener("open", () => { state.textContent = "Connected: configs appear here as they go live."; });
  source.addEventListener("error", () => {
    state.textContent = source.readyState === EventSource.CLOSED ? "Disconnected; open the page again." : "Reconnecting…";
  });
  source.addEventListener("config", (message) => {
    const c = JSON.parse(message.data);
    const project = c.orgSlug && c.projectSlug
      ? h("a", { href: `#/project/${enc(c.orgSlug)}/${enc(c.projectSlug)}` }, `${c.orgSlug}/${c.projectSlug}`) : "—";
    add(h("tr", { "data-key": c.publicKey }, h("td", {}, new Date().toLocaleTimeString()), h("td", {}, project),
      h("td", {}, h("code", {}, c.publicKey)), h("td", {}, h("code", {}, c.revision)),
      h("td", { class: "propagation" }, c.propagationMs === null ? "—" : `${c.propagationMs} ms`)));
  });
  source.addEventListener("dropped", (message) => {
    const { dropped } = JSON.parse(message.data);
    add(h("tr", { class: "dropped" }, h("td", { colspan: 5 }, `${dropped} older changes not shown (this page read too slowly)`)));
  });
  const list = table(["Seen", "Project", "Key", "Revision", "Propagation"], []);
  list.querySelector("tbody").replaceWith(rows);
  return [h("h1", {}, "Live"), state, list,
    h("p", { class: "muted" }, "Each new revision of a key's config, for the organizations you may read. "
      + "Propagation: from the change's commit to the moment the gateway saw the revision live.")];
}

// -- a project's error events and one event's stack trace ---------------------------------------

const PER_PAGE = 25;

// `#/events/ORG/PROJECT?per_page=N&cursor=C`: a page is a link (the API's cursor in it).
async function eventsPage(org, project, search = "") {
  const base = `/api/0/projects/${enc(org)}/${enc(project)}/events/`;
  const wanted = new URLSearchParams(search || "");
  const perPage = /^\d+$/.test(wanted.get("per_page") || "") ? wanted.get("per_page") : String(PER_PAGE);
  const cursor = wanted.get("cursor");
  const query = new URLSearchParams({ per_page: perPage });
  if (cursor) query.set("cursor", cursor);
  const { items, next, previous } = await apiPage(`${base}?${query}`);
  const at = (c, size = perPage) => `#/events/${enc(org)}/${enc(project)}?${new URLSearchParams({ per_page: size, ...(c ? { cursor: c } : {}) })}`;
  const rows = items.map((e) => h("tr", { "data-event": e.id },
    h("td", {}, h("a", { href: `#/event/${enc(org)}/${enc(project)}/${enc(e.id)}` }, h("code", {}, e.id))),
    h("td", {}, e.title || "—"), h("td", {}, e.level || "—"), h("td", {}, when(e.dateCreated))));
  const pager = h("nav", { class: "pager", "aria-label": "Pages of events" },
    previous ? h("a", { href: at(previous), rel: "prev" }, "← Newer") : null,
    next ? h("a", { href: at(next), rel: "next" }, "Older →") : null,
    h("span", { class: "muted" }, "Per page: ", ["10", "25", "100"].map((n, i) => [i ? " · " : "",
      n === perPage ? h("strong", {}, n) : h("a", { href: at(null, n) }, n)])));
  return [h("h1", {}, "Recent events ", h("span", { class: "muted" }, `(${org} / ${project})`)),
    h("p", {}, h("a", { href: `#/project/${enc(org)}/${enc(project)}` }, `← ${project}`)),
    h("section", {}, h("h2", {}, "Error events, newest first"), items.length
      ? table(["Event ID", "Title", "Level", "Time"], rows)
      : h("p", { class: "muted" }, cursor ? "No more events." : "No error events stored for this project yet."),
    pager)];
}

// Sentry's exception interface: `exception.values` (or a bare list), each with its stacktrace.
// Without an exception (a message with `attach_stacktrace`), the crashed or current thread's
// stacktrace, else the event's own `stacktrace`, shown the same way.
function exceptionsOf(event) {
  const listOf = (raw) => (Array.isArray(raw) ? raw : Array.isArray(raw?.values) ? raw.values : [])
    .filter((v) => v && typeof v === "object");
  const values = listOf(event.exception);
  if (values.length) return values;
  const threads = listOf(event.threads).filter((t) => Array.isArray(t.stacktrace?.frames));
  const thread = threads.find((t) => t.crashed) || threads.find((t) => t.current) || threads[0];
  if (thread) return [{ type: `Thread ${thread.name || thread.id || ""}`.trim(), stacktrace: thread.stacktrace }];
  return Array.isArray(event.stacktrace?.frames) ? [{ type: "Stack trace", stacktrace: event.stacktrace }] : [];
}

function frameView(frame) {
  const where = frame.filename || frame.abs_path || frame.module || "?";
  const line = frame.lineno === undefined || frame.lineno === null ? "" : `, line ${frame.lineno}`;
  return h("li", { class: "frame" + (frame.in_app ? " in-app" : "") },
    h("p", { class: "frame-where" }, h("code", { class: "frame-function" }, frame.function || "?"), " in ",
      h("code", { class: "frame-file" }, where), line, frame.in_app ? h("span", { class: "muted" }, " (in app)") : null),
    typeof frame.context_line === "string"
      ? h("pre", { class: "frame-context" }, [...(frame.pre_context || []).slice(-2).map((t) => h("span", { class: "ctx" }, t)),
        h("span", { class: "here" }, frame.context_line), ...(frame.post_context || []).slice(0, 2).map((t) => h("span", { class: "ctx" }, t))])
      : null);
}

function exceptionView(value) {
  const frames = Array.isArray(value.stacktrace?.frames) ? value.stacktrace.frames : [];
  return h("article", { class: "exception" },
    h("h3", {}, h("code", {}, value.type || "Error"), value.value ? `: ${value.value}` : ""),
    frames.length ? [h("p", { class: "muted" }, `${frames.length} frame${frames.length === 1 ? "" : "s"}, most recent call last`),
      h("ol", { class: "frames" }, frames.map(frameView))]
      : h("p", { class: "muted" }, "No stack trace in this exception."));
}

async function eventPage(org, project, eventId) {
  const detail = await api("GET", `/api/0/projects/${enc(org)}/${enc(project)}/events/${enc(eventId)}/`);
  const event = detail.event || {};
  const exceptions = exceptionsOf(event);
  const facts = [["Time", when(detail.dateCreated)], ["Received", when(detail.dateReceived)], ["Level", detail.level],
    ["Platform", detail.platform], ["Culprit", detail.culprit], ["Release", detail.release], ["Environment", detail.environment]]
    .filter(([, v]) => v);
  return [h("h1", {}, detail.title || detail.eventID),
    h("p", {}, h("a", { href: `#/events/${enc(org)}/${enc(project)}` }, "← Recent events"), " · ",
      h("a", { href: `#/project/${enc(org)}/${enc(project)}` }, project)),
    h("section", {}, h("h2", {}, "Event ", h("code", {}, detail.eventID)),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      (detail.tags || []).length ? h("p", { class: "muted event-tags" }, "Tags: ", detail.tags.map((t) => `${t.key}=${t.value}`).join(", ")) : null),
    h("section", { id: "stacktrace" }, h("h2", {}, "Stack trace"), exceptions.length
      ? [...exceptions].reverse().map(exceptionView) : h("p", { class: "muted" }, "This event has no stack trace.")),
    aiSection(org, project, detail.eventID)];
}

// -- routing -----------------------------------------------------------------------------------

const pages = [[/^#\/org\/([^/]+)$/, orgPage], [/^#\/project\/([^/]+)\/([^/]+)$/, projectPage],
               [/^#\/key\/([^/]+)\/([^/]+)\/([^/]+)$/, keyPage], [/^#\/relays$/, relaysPage],
               [/^#\/events\/([^/?]+)\/([^/?]+)(?:\?(.*))?$/, eventsPage],
               [/^#\/event\/([^/]+)\/([^/]+)\/([^/]+)$/, eventPage], [/^#\/live$/, livePage], [/^/, orgsPage]];

let renders = 0;
async function route() {
  if (!session.csrf) return;
  const hash = location.hash || "#/orgs";
  for (const [pattern, page] of pages) {
    const match = hash.match(pattern);
    if (!match) continue;
    closeLive();
    main.setAttribute("aria-busy", "true");
    try {
      const content = await page(...match.slice(1).map((part) => (part === undefined ? undefined : decodeURIComponent(part))));
      main.replaceChildren(...content);
      main.dataset.rendered = `${hash} ${++renders}`;
      document.title = `${main.querySelector("h1")?.textContent || "relayctl"} · relayctl console`;
    } catch (caught) {
      const error = asApiError(caught);
      if (error.status !== 401) main.replaceChildren(h("h1", {}, "Error"), h("p", { role: "alert" }, error.message));
    } finally {
      main.removeAttribute("aria-busy");
    }
    return;
  }
}

window.addEventListener("hashchange", () => { route().then(() => main.focus()); });

(async () => {
  try {
    const answer = await api("GET", "/console/session");
    session.csrf = answer.csrf;
    if (session.csrf) await started(); else showLogin();
  } catch (error) {
    showLogin(error instanceof ApiError ? "" : asApiError(error).message);
  }
})();
