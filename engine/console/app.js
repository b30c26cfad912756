// The shenguan console: a client of the engine's JSON routes (POST /v1/<Service>/<Method>).
//
// Rules this file keeps (see engine/src/server/console.rs):
// - every value reaches the page through text nodes (el() below); nothing is parsed as markup;
// - the token is kept in this tab's sessionStorage and sent only in the Authorization header;
// - routes live in the URL fragment and never carry the token.
// The server decides what a caller may see; the console shows what it is given, and hides the
// pages a token's roles cannot call only to spare the user a refusal.
"use strict";

const TOKEN_KEY = "shenguan.token";

// ---------------------------------------------------------------------------------------------
// Building the page: elements with text, never markup.

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    node.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function link(href, ...text) {
  return el("a", { href }, ...text);
}

function table(headers, rows, attrs) {
  return el(
    "table",
    attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "无"))),
  );
}

function tag(text, kind) {
  return el("span", { class: "tag" + (kind ? " " + kind : "") }, text);
}

function show(...children) {
  const main = document.getElementById("main");
  main.replaceChildren();
  append(main, children);
}

function errorBox(e) {
  const what = e && e.status ? `${e.status}：${e.message}` : String((e && e.message) || e);
  return el("p", { class: "error", role: "alert" }, what);
}

// ---------------------------------------------------------------------------------------------
// The JSON API.

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

async function api(service, method, body) {
  const headers = { "content-type": "application/json", "x-request-id": "console-" + Math.random().toString(36).slice(2, 10) };
  const t = token();
  if (t) headers.authorization = "Bearer " + t;
  let response;
  try {
    response = await fetch(`/v1/${service}/${method}`, { method: "POST", headers, body: JSON.stringify(body || {}), credentials: "omit", cache: "no-store" });
  } catch (e) {
    throw new ApiError("UNAVAILABLE", 14, "无法连接服务器：" + e.message, []);
  }
  const text = await response.text();
  let data;
  try {
    data = text ? JSON.parse(text) : {};
  } catch (_) {
    throw new ApiError("INTERNAL", 13, `服务器返回了无法解析的内容（HTTP ${response.status}）`, []);
  }
  if (!response.ok) {
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
    }
    throw new ApiError(data.status || "HTTP " + response.status, data.code, data.message || text, data.details || []);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Who is signed in (read from the token for display and navigation only: the server decides).

function claims() {
  const t = token();
  const part = t.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (_) {
    return null;
  }
}

function roles() {
  const c = claims();
  return new Set((c && c.roles) || []);
}

function has(...names) {
  const r = roles();
  return r.has("engine_admin") || names.some((n) => r.has(n));
}

const ROLE_NAMES = {
  engine_admin: "引擎管理员",
  region_admin: "地区管理员",
  auditor: "审计员",
  department_admin: "部门管理员",
  office_admin: "处室管理员",
  platform: "政务服务平台",
  supervisor: "监管人员",
};

// ---------------------------------------------------------------------------------------------
// Words: states, channels, deadline statuses.

const STATE_NAMES = {
  accepted: "已受理",
  awaiting_approval: "待审批",
  commitment_pending: "承诺待补材料",
  pending: "承诺待补材料",
  reminded: "已提醒",
  overdue: "已逾期",
  materials_received: "已补齐材料",
  licensed: "已发证",
  revocation_pending: "待撤销",
  closed: "已办结",
  revoked: "已撤销",
  pushed: "已推送待认领",
  viewed: "已认领",
  inspected: "已检查",
  rectifying: "整改中",
  revocation_requested: "已提请撤销",
  closed_compliant: "已办结（合规）",
  closed_rectified: "已办结（已整改）",
  closed_revoked: "已办结（已撤销）",
  cancelled: "已取消",
};
const CASE_STATES = ["accepted", "awaiting_approval", "commitment_pending", "reminded", "overdue", "materials_received", "licensed", "revocation_pending", "closed", "revoked"];
const TASK_STATES = ["pushed", "viewed", "inspected", "rectifying", "revocation_requested", "closed_compliant", "closed_rectified", "closed_revoked", "cancelled"];

function stateName(s) {
  return STATE_NAMES[s] ? `${STATE_NAMES[s]}（${s}）` : s;
}

const TIMER_NAMES = {
  commitment_deadline: "承诺期限",
  material_reminder: "补材料提醒",
  view_deadline: "认领期限",
  result_deadline: "结果反馈期限",
  rectification_deadline: "整改期限",
  deadline: "期限",
  reminder: "提醒",
  run: "抽查",
};
function timerName(n) {
  return TIMER_NAMES[n] ? `${TIMER_NAMES[n]}（${n}）` : n;
}
const DEADLINE_NAMES = { ARMED: ["计时中", "warn"], MET: ["按时完成", "ok"], BREACHED: ["已超期", "bad"], CANCELLED: ["已取消", ""], FIRED: ["已触发", ""] };
const MESSAGE_STATES = { pending: ["待送达", "warn"], delivered: ["已送达", "ok"], dead: ["死信", "bad"], stream: ["仅事件流", ""], discarded: ["已丢弃", ""] };
const ROUTE_NAMES = { normal: "一般程序", commitment: "告知承诺" };
const WEEKDAYS = ["日", "一", "二", "三", "四", "五", "六"];

// The day an instant falls on in China Standard Time, with its weekday.
function dayOf(instant) {
  if (!instant || !instant.unixMillis) return "";
  const d = new Date(Number(instant.unixMillis) + 8 * 3600 * 1000);
  const ymd = d.toISOString().slice(0, 10);
  return `${ymd}（星期${WEEKDAYS[d.getUTCDay()]}）`;
}

function when(instant) {
  return instant && instant.shanghai ? instant.shanghai : "";
}

function principal(entry) {
  const p = entry.principal;
  if (!p || !p.subject) return entry.actor ? `引擎（${entry.actor}）` : "";
  const parts = [p.subject, ROLE_NAMES[p.role] || p.role, p.regionCode, p.department, p.office].filter(Boolean);
  let s = parts.join(" · ");
  if (p.onBehalfOf) s += `（代 ${p.onBehalfOf}）`;
  return s;
}

function caseOfTask(taskId) {
  return taskId.replace(/\/T\d+$/, "");
}

// ---------------------------------------------------------------------------------------------
// Routing: #/page?key=value. The fragment never carries the token.

function route() {
  const hash = location.hash.replace(/^#/, "") || "/cases";
  const [path, query] = hash.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== false && v !== undefined)).toString() : "";
  location.hash = "#" + path + (q ? "?" + q : "");
}

function canReadCases() {
  return has("region_admin", "auditor", "department_admin", "office_admin", "platform");
}

const PAGES = [
  { path: "cases", title: "案件查询", allowed: canReadCases, render: casesPage },
  { path: "boards", title: "部门看板", allowed: () => has("region_admin", "auditor", "department_admin", "office_admin"), render: boardsPage },
  { path: "inbox", title: "监管待办", allowed: () => has("supervisor", "region_admin", "auditor", "department_admin", "office_admin"), render: inboxPage },
  { path: "statistics", title: "时效统计", allowed: () => has("region_admin", "auditor", "department_admin", "office_admin"), render: statisticsPage },
  { path: "enterprise", title: "企业档案", allowed: () => has("region_admin", "auditor", "department_admin", "office_admin"), render: enterprisePage },
  { path: "dead-letters", title: "死信", allowed: () => has(), render: deadLettersPage },
  { path: "catalogs", title: "目录", allowed: () => has("region_admin", "auditor", "department_admin", "office_admin", "platform"), render: catalogsPage },
  { path: "spot-checks", title: "双随机抽查", allowed: () => has("region_admin", "auditor", "department_admin", "office_admin", "supervisor"), render: spotChecksPage },
  { path: "calendar", title: "工作日历", allowed: () => has("region_admin", "auditor", "department_admin", "office_admin"), render: calendarPage },
];

function header() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.replaceChildren();
  who.replaceChildren();
  if (!token()) return;
  const current = route().parts[0];
  for (const p of PAGES.filter((p) => p.allowed())) {
    nav.appendChild(el("a", { href: "#/" + p.path, class: current === p.path ? "active" : "" }, p.title));
  }
  const c = claims() || {};
  const r = (c.roles || []).map((x) => ROLE_NAMES[x] || x).join("、");
  append(who, [c.sub || "", r ? `（${r}）` : "", [c.region, c.department, c.office].filter(Boolean).join(" · ")]);
  who.appendChild(el("button", { class: "secondary", id: "signout", onclick: () => { sessionStorage.removeItem(TOKEN_KEY); render(); } }, "退出"));
}

async function render() {
  header();
  if (!token()) return signInPage();
  const { parts, params } = route();
  try {
    if (parts[0] === "case" && parts.length > 1) return await casePage(parts.slice(1).join("/"));
    const page = PAGES.find((p) => p.path === parts[0]) || PAGES.find((p) => p.allowed()) || PAGES[0];
    await page.render(params);
  } catch (e) {
    show(errorBox(e));
    if (!token()) signInPage("登录已失效，请重新登录。");
  }
}

// ---------------------------------------------------------------------------------------------
// Sign-in.

async function signInPage(note) {
  header();
  const input = el("textarea", { id: "token", placeholder: "粘贴令牌（JWT）", autocomplete: "off", spellcheck: "false" });
  const message = el("div", {});
  if (note) message.appendChild(el("p", { class: "error" }, note));
  const signIn = async (t) => {
    sessionStorage.setItem(TOKEN_KEY, t.trim());
    if (!claims()) {
      sessionStorage.removeItem(TOKEN_KEY);
      message.replaceChildren(el("p", { class: "error" }, "这不是一个令牌（JWT）。"));
      return;
    }
    render();
  };
  const card = el(
    "section",
    { class: "card signin" },
    el("h1", {}, "登录"),
    el("p", { class: "muted" }, "令牌只保存在本标签页中，关闭标签页即退出。"),
    input,
    el("div", { class: "actions" }, el("button", { id: "signin", onclick: () => signIn(input.value) }, "登录")),
    message,
  );
  show(card);
  // Dev mode: the server offers its local admin token to a browser on the same machine.
  try {
    const r = await fetch("/console/dev-token", { credentials: "omit", cache: "no-store" });
    if (r.ok) {
      const t = (await r.text()).trim();
      card.insertBefore(
        el("p", { class: "notice" }, "开发模式：", el("button", { id: "dev-signin", onclick: () => signIn(t) }, "使用本机管理员令牌登录")),
        input,
      );
    }
  } catch (_) {
    /* not offered */
  }
}

// ---------------------------------------------------------------------------------------------
// Case search.

function field(label, input, cls) {
  return el("label", { class: cls || "" }, label, input);
}

function select(name, options, value) {
  return el("select", { name }, options.map(([v, t]) => el("option", { value: v, selected: v === value }, t)));
}

function formValues(form) {
  const out = {};
  for (const e of form.elements) {
    if (!e.name) continue;
    out[e.name] = e.type === "checkbox" ? e.checked : e.value.trim();
  }
  return out;
}

async function casesPage(params) {
  const c = claims() || {};
  const p = (k) => params.get(k) || "";
  const form = el(
    "form",
    { class: "filters", id: "case-search" },
    field("地区代码", el("input", { name: "region", value: p("region") || c.region || "", size: 8 })),
    field("审批部门", el("input", { name: "department", value: p("department"), size: 14 })),
    field("状态", select("state", [["", "全部"], ...CASE_STATES.map((s) => [s, stateName(s)])], p("state"))),
    field("办理方式", select("route", [["", "全部"], ["normal", "一般程序"], ["commitment", "告知承诺"]], p("route"))),
    field("受理起", el("input", { name: "from", type: "date", value: p("from") })),
    field("受理止", el("input", { name: "to", type: "date", value: p("to") })),
    field("案件编号", el("input", { name: "caseNo", value: p("caseNo"), size: 16 })),
    field("统一社会信用代码", el("input", { name: "creditCode", value: p("creditCode"), size: 20 })),
    field("承诺到期（工作日内）", el("input", { name: "due", type: "number", min: 0, max: 60, value: p("due"), size: 4 })),
    field("仅逾期", el("input", { name: "overdue", type: "checkbox", checked: p("overdue") === "1" }), "check"),
    el("button", { type: "submit" }, "查询"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    if (v.caseNo) {
      const id = v.caseNo.includes("/") ? v.caseNo : `${v.region}/${v.caseNo}`;
      return go("/case/" + id);
    }
    go("/cases", { region: v.region, department: v.department, state: v.state, route: v.route, from: v.from, to: v.to, creditCode: v.creditCode, due: v.due, overdue: v.overdue ? "1" : "", q: "1" });
  });
  const results = el("div", { id: "results" });
  show(el("h1", {}, "案件查询"), el("section", { class: "card" }, form), results);
  if (!params.get("q")) return;
  const request = {
    regionCode: p("region"),
    approvalDepartment: p("department"),
    state: p("state"),
    overdueOnly: p("overdue") === "1",
    applicantCode: p("creditCode"),
    acceptedFrom: p("from"),
    acceptedTo: p("to"),
    route: p("route"),
    commitmentDueWithinWorkingDays: Number(p("due") || 0),
    page: { pageSize: 50, pageToken: p("page") },
  };
  try {
    const reply = await api("AdminService", "QueryCases", request);
    const cases = reply.cases || [];
    results.replaceChildren(
      caseTable(cases),
      reply.nextPageToken ? el("p", {}, link("#/cases?" + new URLSearchParams({ ...Object.fromEntries(params), page: reply.nextPageToken }).toString(), "下一页")) : null,
    );
  } catch (e) {
    results.replaceChildren(errorBox(e));
  }
}

function caseTable(cases) {
  return table(
    ["案件", "申请人", "信用代码", "审批部门", "办理方式", "状态", "承诺期限", "受理时间", ""],
    cases.map((k) =>
      el(
        "tr",
        { "data-case": k.caseId },
        el("td", {}, link("#/case/" + k.caseId, k.caseId)),
        el("td", { class: "applicant" }, k.applicantName),
        el("td", {}, k.applicantCode ? link("#/enterprise?code=" + encodeURIComponent(k.applicantCode), k.applicantCode) : ""),
        el("td", {}, k.approvalDepartment),
        el("td", {}, ROUTE_NAMES[k.route] || k.route),
        el("td", {}, stateName(k.state)),
        el("td", {}, k.commitmentDeadline, k.commitmentDeadlineProvisional ? tag("暂定日历", "warn") : null),
        el("td", {}, when(k.acceptedAt)),
        el("td", {}, k.overdue ? tag("逾期", "bad") : null, k.unlinked ? tag("未关联监管", "warn") : null),
      ),
    ),
    { id: "case-table" },
  );
}

// ---------------------------------------------------------------------------------------------
// One case: facts, state diagrams, tasks, timeline and messages.

async function casePage(caseId) {
  const [reply, timeline] = await Promise.all([
    api("IntakeService", "GetCase", { caseId }),
    api("AdminService", "GetTimeline", { caseId }),
  ]);
  const k = reply.case;
  const entries = timeline.entries || [];
  const facts = el(
    "dl",
    { class: "facts" },
    el("dt", {}, "申请人"), el("dd", { id: "applicant" }, k.applicantName),
    el("dt", {}, "统一社会信用代码"), el("dd", {}, k.applicantCode ? link("#/enterprise?code=" + encodeURIComponent(k.applicantCode), k.applicantCode) : "", k.creditGrade ? tag("信用等级 " + k.creditGrade) : null),
    el("dt", {}, "审批部门"), el("dd", {}, k.approvalDepartment),
    el("dt", {}, "办理方式"), el("dd", {}, ROUTE_NAMES[k.route] || k.route),
    el("dt", {}, "状态"), el("dd", { id: "case-state" }, stateName(k.state), k.overdue ? tag("逾期", "bad") : null, k.unlinked ? tag("未关联监管", "warn") : null),
    el("dt", {}, "承诺期限"), el("dd", {}, k.commitmentDeadline || "无", k.commitmentDeadlineProvisional ? tag("按暂定日历计算", "warn") : null),
    el("dt", {}, "许可证号"), el("dd", {}, k.licenseNo || "无"),
    el("dt", {}, "受理时间"), el("dd", {}, when(k.acceptedAt)),
    el("dt", {}, "目录版本"), el("dd", {}, k.catalogVersions || ""),
  );
  const deadlines = (k.deadlines || []).map((d) => el("li", {}, timerName(d.name), "：", when(d.due), " ", dayOf(d.due), d.provisional ? tag("暂定日历", "warn") : null));
  const tasks = table(
    ["任务", "监管部门", "处室", "状态", "期限", ""],
    (k.tasks || []).map((t) =>
      el(
        "tr",
        {},
        el("td", {}, t.taskId),
        el("td", {}, t.department),
        el("td", {}, t.office),
        el("td", {}, stateName(t.state)),
        el("td", {}, (t.deadlines || []).map((d) => el("div", {}, timerName(d.name), "：", when(d.due)))),
        el("td", {}, t.overdue ? tag("逾期", "bad") : null),
      ),
    ),
  );
  const diagrams = el("div", { id: "diagrams" });
  show(
    el("h1", {}, "案件 ", k.caseId),
    el("section", { class: "card" }, facts, deadlines.length ? el("div", {}, el("h2", {}, "计时中的期限"), el("ul", {}, deadlines)) : null),
    el("section", { class: "card" }, el("h2", {}, "流程图"), diagrams),
    el("section", { class: "card" }, el("h2", {}, "监管任务"), tasks),
    el("section", { class: "card" }, el("h2", {}, "时间线"), timelineTable(entries)),
    el("section", { class: "card" }, el("h2", {}, "对外消息"), messagesTable(entries)),
  );
  const instances = [{ id: k.caseId, workflow: k.workflow, version: k.workflowVersion, state: k.state, title: "案件" }].concat(
    (k.tasks || []).map((t) => ({ id: t.taskId, workflow: t.workflow, version: t.workflowVersion, state: t.state, title: `任务 ${t.taskId}（${t.department}）` })),
  );
  for (const inst of instances) {
    if (!inst.workflow) continue;
    const box = el("div", { class: "diagram", "data-instance": inst.id }, el("h3", {}, inst.title));
    diagrams.appendChild(box);
    try {
      const def = await api("AdminService", "GetWorkflow", { name: inst.workflow, version: inst.version });
      box.appendChild(diagram(def, inst.state, entries.filter((e) => e.instanceId === inst.id)));
    } catch (e) {
      box.appendChild(errorBox(e));
    }
  }
}

function timelineTable(entries) {
  return table(
    ["时间", "对象", "事件", "状态", "期限", "操作人", "说明"],
    entries.map((e) =>
      el(
        "tr",
        {},
        el("td", {}, when(e.at)),
        el("td", {}, e.instanceId),
        el("td", {}, e.event),
        el("td", {}, e.fromState ? stateName(e.fromState) + " → " : "", stateName(e.toState)),
        el("td", {}, (e.deadlines || []).map((d) => {
          const [word, kind] = DEADLINE_NAMES[d.status] || [d.status, ""];
          return el("div", { class: "deadline" }, timerName(d.name), " ", tag(word, kind), " ", dayOf(d.due), d.provisional ? tag("暂定日历", "warn") : null);
        })),
        el("td", {}, principal(e)),
        el("td", {}, e.note),
      ),
    ),
    { id: "timeline" },
  );
}

function messagesTable(entries) {
  const rows = [];
  for (const e of entries) {
    for (const m of e.outbound || []) {
      const [word, kind] = MESSAGE_STATES[m.state] || [m.state, ""];
      rows.push(
        el(
          "tr",
          {},
          el("td", {}, m.key),
          el("td", {}, m.channel),
          el("td", {}, m.type),
          el("td", {}, m.recipient),
          el("td", {}, tag(word, kind), m.attempts && m.attempts !== "0" ? ` 尝试 ${m.attempts} 次` : ""),
          el("td", {}, m.lastError),
          el("td", {}, m.deliveredAtMs && m.deliveredAtMs !== "0" ? new Date(Number(m.deliveredAtMs)).toLocaleString("zh-CN", { timeZone: "Asia/Shanghai" }) : ""),
        ),
      );
    }
  }
  return table(["消息", "渠道", "类型", "接收方", "送达", "最近错误", "送达时间"], rows, { id: "messages" });
}

// A workflow as columns of states, each a step further from the initial state; the current
// state filled, the states and transitions this instance went through drawn in blue.
function diagram(def, current, entries) {
  const depth = new Map([[def.initial, 0]]);
  const queue = [def.initial];
  while (queue.length) {
    const s = queue.shift();
    for (const t of def.transitions) {
      if (t.from.includes(s) && !depth.has(t.to)) {
        depth.set(t.to, depth.get(s) + 1);
        queue.push(t.to);
      }
    }
  }
  let deepest = Math.max(0, ...depth.values());
  for (const s of def.states) if (!depth.has(s.name)) depth.set(s.name, ++deepest);
  const columns = [];
  for (const s of def.states) {
    const d = depth.get(s.name);
    (columns[d] = columns[d] || []).push(s);
  }
  const W = 140, H = 34, GX = 120, GY = 30, PAD = 16;
  const pos = new Map();
  columns.forEach((col, x) => (col || []).forEach((s, y) => pos.set(s.name, { x: PAD + x * (W + GX), y: PAD + y * (H + GY) })));
  const width = PAD * 2 + columns.length * (W + GX) - GX;
  const height = PAD * 2 + Math.max(...columns.map((c) => (c || []).length)) * (H + GY) - GY + 20;
  const visited = new Set([def.initial]);
  const taken = new Set();
  for (const e of entries) {
    if (e.toState) visited.add(e.toState);
    if (e.fromState && e.toState) taken.add(e.fromState + "→" + e.toState);
  }
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${def.name} v${def.version}` });
  root.appendChild(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9fb3c8" }))));
  // One edge per pair of states, labelled with every event that takes it.
  const edges = new Map();
  for (const t of def.transitions) {
    for (const from of t.from) {
      if (from === t.to) continue;
      const key = from + "→" + t.to;
      const e = edges.get(key) || { from, to: t.to, events: [], titles: [], timer: false };
      if (!e.events.includes(t.event)) e.events.push(t.event);
      e.titles.push(`${t.event}${t.guard ? " [" + t.guard + "]" : ""}${t.timer ? "（计时器 " + t.timer + "）" : ""}`);
      e.timer = e.timer || Boolean(t.timer);
      edges.set(key, e);
    }
  }
  for (const [key, e] of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const isTaken = taken.has(key);
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const back = x2 <= a.x;
    const d = back
      ? `M ${a.x + W / 2} ${a.y + H} C ${a.x + W / 2} ${a.y + H + 40}, ${b.x + W / 2} ${b.y + H + 40}, ${b.x + W / 2} ${b.y + H}`
      : `M ${x1} ${y1} C ${x1 + GX / 2} ${y1}, ${x2 - GX / 2} ${y2}, ${x2} ${y2}`;
    root.appendChild(svg("path", { d, class: "edge" + (isTaken ? " taken" : "") + (e.timer ? " timer" : ""), "marker-end": "url(#arrow)", "data-edge": key }, svg("title", {}, e.titles.join("；"))));
    if (!back) {
      // Near the source, where edges fanning out of one state are still apart.
      root.appendChild(svg("text", { x: x1 + 6, y: y1 + (y2 - y1) * 0.22 - 3, class: "edge" + (isTaken ? " taken" : "") }, (e.timer ? "计时·" : "") + e.events.join("、")));
    }
  }
  for (const s of def.states) {
    const p = pos.get(s.name);
    const cls = ["state", s.terminal ? "terminal" : "", s.name === current ? "current" : visited.has(s.name) ? "visited" : ""].join(" ");
    root.appendChild(
      svg("g", { "data-state": s.name, class: s.name === current ? "current" : "" },
        svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6, class: cls }),
        svg("text", { x: p.x + W / 2, y: p.y + H / 2 + 4, "text-anchor": "middle", class: s.name === current ? "current" : "" }, STATE_NAMES[s.name] || s.name),
        svg("title", {}, `${s.name}${s.description ? "：" + s.description : ""}`),
      ),
    );
  }
  return root;
}

// ---------------------------------------------------------------------------------------------
// Boards per department.

async function boardsPage(params) {
  const c = claims() || {};
  const region = params.get("region") || c.region || "";
  const department = params.get("department") || c.department || "";
  const form = el(
    "form",
    { class: "filters" },
    field("地区代码", el("input", { name: "region", value: region, size: 8 })),
    field("部门", el("input", { name: "department", value: department, size: 16 })),
    el("button", { type: "submit" }, "查看"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    go("/boards", { region: v.region, department: v.department });
  });
  const board = el("div", { class: "board", id: "board" });
  show(el("h1", {}, "部门看板"), el("section", { class: "card" }, form), board);
  const tile = (id, title, count, href, note) =>
    el("div", { class: "tile", "data-tile": id }, el("div", { class: "muted" }, title), el("div", { class: "count" }, href ? link(href, String(count)) : String(count)), note ? el("div", { class: "muted" }, note) : null);
  try {
    const [soon, overdue, unviewed, results] = await Promise.all([
      api("AdminService", "QueryCases", { regionCode: region, approvalDepartment: department, commitmentDueWithinWorkingDays: 3, page: { pageSize: 200 } }),
      api("AdminService", "QueryCases", { regionCode: region, approvalDepartment: department, state: "overdue", page: { pageSize: 200 } }),
      api("SupervisionService", "ListTasks", { regionCode: region, department, state: "pushed", missed: "view", page: { pageSize: 200 } }),
      api("SupervisionService", "ListTasks", { regionCode: region, department, missed: "result", page: { pageSize: 200 } }),
    ]);
    const count = (list, r) => list.length + (r.nextPageToken ? "+" : "");
    board.replaceChildren(
      tile("due-soon", "3 个工作日内到期的承诺", count(soon.cases || [], soon), "#/cases?" + new URLSearchParams({ region, department, due: "3", q: "1" }), "按官方工作日历计算"),
      tile("overdue", "已逾期的承诺", count(overdue.cases || [], overdue), "#/cases?" + new URLSearchParams({ region, department, state: "overdue", q: "1" })),
      tile("unviewed", "3 个工作日内未认领的任务", count(unviewed.tasks || [], unviewed), "#/inbox?" + new URLSearchParams({ region, department, state: "pushed", missed: "view" })),
      tile("results-late", "结果反馈超期的任务", count(results.tasks || [], results), "#/inbox?" + new URLSearchParams({ region, department, missed: "result" })),
    );
  } catch (e) {
    board.replaceChildren(errorBox(e));
  }
}

// ---------------------------------------------------------------------------------------------
// The supervisor's inbox.

async function inboxPage(params) {
  const c = claims() || {};
  const p = (k) => params.get(k) || "";
  const form = el(
    "form",
    { class: "filters" },
    field("地区代码", el("input", { name: "region", value: p("region") || c.region || "", size: 8 })),
    field("部门", el("input", { name: "department", value: p("department") || c.department || "", size: 16 })),
    field("处室", el("input", { name: "office", value: p("office") || c.office || "", size: 12 })),
    field("状态", select("state", [["", "全部"], ...TASK_STATES.map((s) => [s, stateName(s)])], p("state"))),
    field("超期", select("missed", [["", "不限"], ["view", "认领超期"], ["result", "结果反馈超期"], ["rectification", "整改超期"]], p("missed"))),
    field("仅逾期", el("input", { name: "overdue", type: "checkbox", checked: p("overdue") === "1" }), "check"),
    el("button", { type: "submit" }, "查询"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    go("/inbox", { region: v.region, department: v.department, office: v.office, state: v.state, missed: v.missed, overdue: v.overdue ? "1" : "" });
  });
  const list = el("div", { id: "tasks" });
  const message = el("div", { id: "inbox-message" });
  show(el("h1", {}, "监管待办"), el("section", { class: "card" }, form), message, list);
  const reply = await api("SupervisionService", "ListTasks", {
    regionCode: p("region") || c.region || "",
    department: p("department") || c.department || "",
    office: p("office") || c.office || "",
    state: p("state"),
    overdueOnly: p("overdue") === "1",
    missed: p("missed"),
    page: { pageSize: 100 },
  });
  const act = async (method, body, done) => {
    try {
      const r = await api("SupervisionService", method, body);
      await inboxPage(params);
      document.getElementById("inbox-message").replaceChildren(el("p", { class: "notice", role: "status" }, `${done}：${r.task.taskId}，现为 ${stateName(r.task.state)}`));
    } catch (e) {
      message.replaceChildren(errorBox(e));
    }
  };
  const actions = (t) => {
    const supervisor = has("supervisor");
    if (!supervisor) return null;
    if (t.state === "pushed") return el("button", { class: "acknowledge", onclick: () => act("AcknowledgeTask", { taskId: t.taskId }, "已认领") }, "认领");
    if (t.state === "viewed") {
      const date = el("input", { type: "date", "aria-label": "检查完成日期" });
      return el("span", { class: "actions" }, date, el("button", { onclick: () => act("ReportInspection", { taskId: t.taskId, finishedOn: date.value }, "已报告检查") }, "报告检查"));
    }
    if (t.state === "inspected") {
      const outcome = select("outcome", [["OUTCOME_COMPLIANT", "合规"], ["OUTCOME_NON_COMPLIANT", "责令整改"], ["OUTCOME_REVOCATION", "提请撤销"]], "OUTCOME_COMPLIANT");
      const by = el("input", { type: "date", "aria-label": "整改期限" });
      const notes = el("input", { placeholder: "说明", size: 16 });
      return el("span", { class: "actions" }, outcome, by, notes, el("button", { onclick: () => act("ReportResult", { taskId: t.taskId, outcome: outcome.value, rectificationDeadline: by.value, notes: notes.value }, "已报告结果") }, "报告结果"));
    }
    if (t.state === "rectifying") {
      const ok = el("input", { type: "checkbox", "aria-label": "已整改" });
      const notes = el("input", { placeholder: "说明", size: 16 });
      return el("span", { class: "actions" }, el("label", {}, ok, "已整改"), notes, el("button", { onclick: () => act("ReportRectification", { taskId: t.taskId, rectified: ok.checked, notes: notes.value }, "已报告整改") }, "报告整改"));
    }
    return null;
  };
  list.replaceChildren(
    table(
      ["任务", "案件", "监管部门", "处室", "状态", "期限", "", "操作"],
      (reply.tasks || []).map((t) =>
        el(
          "tr",
          { "data-task": t.taskId },
          el("td", {}, t.taskId),
          el("td", {}, canReadCases() ? link("#/case/" + t.caseId, t.caseId) : t.caseId),
          el("td", {}, t.department),
          el("td", {}, t.office),
          el("td", { class: "state" }, stateName(t.state)),
          el("td", {}, (t.deadlines || []).map((d) => el("div", {}, timerName(d.name), "：", when(d.due), " ", dayOf(d.due)))),
          el("td", {}, t.overdue ? tag("逾期", "bad") : null),
          el("td", {}, actions(t)),
        ),
      ),
      { id: "task-table" },
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// §21 statistics: counts from the engine's counters; a click asks for the ids behind a figure.

const APPROVAL_FIGURES = [
  ["cases", "受理案件"], ["commitments", "承诺件"], ["commitmentsFulfilled", "按期履诺"], ["commitmentsOverdue", "承诺逾期"], ["commitmentsRevoked", "承诺撤销"], ["revoked", "撤销许可"],
];
const SUPERVISION_FIGURES = [
  ["tasks", "监管任务"], ["viewedInTime", "按时认领"], ["viewedLate", "逾期认领"], ["viewOverdue", "超期未认领"], ["resultsInTime", "按时反馈"], ["resultsLate", "逾期反馈"], ["resultOverdue", "超期未反馈"], ["rectificationsOrdered", "责令整改"], ["rectified", "已整改"], ["rectificationFailed", "整改未通过"], ["revocationsDecided", "提请撤销"],
];
const BAD_FIGURES = new Set(["commitmentsOverdue", "viewedLate", "viewOverdue", "resultsLate", "resultOverdue", "rectificationFailed"]);

async function statisticsPage(params) {
  const c = claims() || {};
  const year = new Date().getFullYear();
  const p = (k, d) => params.get(k) || d || "";
  const form = el(
    "form",
    { class: "filters" },
    field("地区代码", el("input", { name: "region", value: p("region", c.region), size: 8 })),
    field("部门", el("input", { name: "department", value: p("department", c.department), size: 16 })),
    field("起", el("input", { name: "from", type: "date", value: p("from", `${year}-01-01`) })),
    field("止", el("input", { name: "to", type: "date", value: p("to", `${year}-12-31`) })),
    el("button", { type: "submit" }, "统计"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = formValues(form);
    go("/statistics", { region: v.region, department: v.department, from: v.from, to: v.to });
  });
  const out = el("div", { id: "figures" });
  const ids = el("div", { id: "figure-ids" });
  show(el("h1", {}, "时效统计（第二十一条）"), el("section", { class: "card" }, form), ids, out);
  const request = { regionCode: p("region", c.region), department: p("department", c.department), from: p("from", `${year}-01-01`), to: p("to", `${year}-12-31`) };
  const reply = await api("AdminService", "GetStatistics", request);
  const drill = async (side, row, key, label) => {
    ids.replaceChildren(el("p", { class: "muted" }, "正在读取……"));
    try {
      const r = await api("AdminService", "GetStatistics", { ...request, regionCode: row.regionCode, department: row.department, office: row.office || "", withIds: true });
      const rows = side === "approval" ? r.approval : r.supervision;
      const match = (rows || []).find((x) => x.regionCode === row.regionCode && x.department === row.department && (x.office || "") === (row.office || ""));
      const list = (match && match[key] && match[key].ids) || [];
      ids.replaceChildren(
        el("section", { class: "card", id: "drill" },
          el("h2", {}, `${row.department}${row.office ? " · " + row.office : ""}：${label}（${list.length}）`),
          el("ul", {}, list.map((id) => el("li", {}, side === "approval" ? link("#/case/" + id, id) : [link("#/case/" + caseOfTask(id), id)]))),
        ),
      );
    } catch (e) {
      ids.replaceChildren(errorBox(e));
    }
  };
  const figureTable = (side, rows, figures, withOffice) =>
    table(
      ["地区", "部门"].concat(withOffice ? ["处室"] : [], figures.map(([, label]) => label)),
      (rows || []).map((row) =>
        el("tr", {},
          el("td", {}, row.regionCode),
          el("td", {}, row.department),
          withOffice ? el("td", {}, row.office) : null,
          figures.map(([key, label]) => {
            const n = Number((row[key] && row[key].count) || 0);
            return el("td", { class: "num" }, el("button", { class: "figure" + (n ? "" : " zero"), disabled: !n, "data-figure": key, onclick: () => drill(side, row, key, label) }, String(n)));
          }),
        ),
      ),
      { class: side },
    );
  const months = el("section", { class: "card", id: "months" }, el("h2", {}, "按月"), el("p", { class: "muted" }, "正在统计……"));
  out.replaceChildren(
    el("section", { class: "card" }, el("h2", {}, "审批（承诺）"), bars(reply.approval || [], "cases", "commitmentsOverdue", "受理案件", "承诺逾期"), figureTable("approval", reply.approval, APPROVAL_FIGURES, false)),
    el("section", { class: "card" }, el("h2", {}, "监管"), bars(reply.supervision || [], "tasks", "viewOverdue", "任务", "超期未认领"), figureTable("supervision", reply.supervision, SUPERVISION_FIGURES, true)),
    months,
  );
  try {
    await monthly(months, request);
  } catch (e) {
    months.replaceChildren(errorBox(e));
  }
}

// The year of `from`, month by month: each month's figures from the counters, summed over the
// rows in scope; a month links to the same page narrowed to it, where every figure drills down.
async function monthly(box, request) {
  const year = Number((request.from || "").slice(0, 4)) || new Date().getFullYear();
  const sum = (rows, key) => (rows || []).reduce((n, r) => n + Number((r[key] && r[key].count) || 0), 0);
  const pad = (n) => String(n).padStart(2, "0");
  const replies = await Promise.all(
    Array.from({ length: 12 }, (_, i) => {
      const last = new Date(Date.UTC(year, i + 1, 0)).getUTCDate();
      return api("AdminService", "GetStatistics", { ...request, from: `${year}-${pad(i + 1)}-01`, to: `${year}-${pad(i + 1)}-${pad(last)}` });
    }),
  );
  const columns = [["approval", "cases", "受理案件"], ["approval", "commitments", "承诺件"], ["approval", "commitmentsOverdue", "承诺逾期"], ["supervision", "tasks", "监管任务"], ["supervision", "viewOverdue", "超期未认领"], ["supervision", "resultOverdue", "超期未反馈"], ["supervision", "rectificationFailed", "整改未通过"]];
  box.replaceChildren(
    el("h2", {}, `${year} 年按月`),
    table(["月份"].concat(columns.map(([, , t]) => t)), replies.map((r, i) => {
      const last = new Date(Date.UTC(year, i + 1, 0)).getUTCDate();
      const q = new URLSearchParams({ region: request.regionCode, department: request.department, from: `${year}-${pad(i + 1)}-01`, to: `${year}-${pad(i + 1)}-${pad(last)}` });
      return el("tr", {}, el("td", {}, link("#/statistics?" + q, `${i + 1} 月`)), columns.map(([side, key]) => {
        const n = sum(side === "approval" ? r.approval : r.supervision, key);
        return el("td", { class: "num" + (n && BAD_FIGURES.has(key) ? " bad" : "") }, String(n));
      }));
    })),
  );
}

// A bar per row: the total, and the part that went wrong, in red.
function bars(rows, totalKey, badKey, totalLabel, badLabel) {
  if (!rows.length) return null;
  const max = Math.max(1, ...rows.map((r) => Number((r[totalKey] && r[totalKey].count) || 0)));
  const rowH = 22, labelW = 220, barW = 420;
  const root = svg("svg", { class: "bars", width: labelW + barW + 120, height: rows.length * rowH + 24, role: "img", "aria-label": `${totalLabel}与${badLabel}` });
  rows.forEach((r, i) => {
    const total = Number((r[totalKey] && r[totalKey].count) || 0);
    const bad = Number((r[badKey] && r[badKey].count) || 0);
    const y = i * rowH + 4;
    root.appendChild(svg("text", { x: 0, y: y + 14 }, `${r.department}${r.office ? " · " + r.office : ""}`.slice(0, 24)));
    root.appendChild(svg("rect", { x: labelW, y, width: Math.max(1, (total / max) * barW), height: rowH - 6 }));
    root.appendChild(svg("rect", { x: labelW, y, width: (bad / max) * barW, height: rowH - 6, class: "bad" }));
    root.appendChild(svg("text", { x: labelW + (total / max) * barW + 6, y: y + 14 }, `${total}（${badLabel} ${bad}）`));
  });
  return root;
}

// ---------------------------------------------------------------------------------------------
// Enterprise profile.

async function enterprisePage(params) {
  const code = params.get("code") || "";
  const form = el("form", { class: "filters" }, field("统一社会信用代码", el("input", { name: "code", value: code, size: 24 })), el("button", { type: "submit" }, "查询"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    go("/enterprise", { code: formValues(form).code });
  });
  const out = el("div", { id: "profile" });
  show(el("h1", {}, "企业档案"), el("section", { class: "card" }, form), out);
  if (!code) return;
  try {
    const p = await api("AdminService", "GetEnterpriseProfile", { creditCode: code });
    out.replaceChildren(
      el("section", { class: "card" }, el("dl", { class: "facts" }, el("dt", {}, "名称"), el("dd", {}, p.name), el("dt", {}, "信用代码"), el("dd", {}, p.creditCode), el("dt", {}, "信用等级"), el("dd", {}, p.creditGrade, p.creditGradeCase ? `（依据 ${p.creditGradeCase}）` : ""))),
      el("section", { class: "card" }, el("h2", {}, "案件"), table(["案件", "状态", "受理时间"], (p.cases || []).map((x) => el("tr", {}, el("td", {}, link("#/case/" + x.instanceId, x.instanceId)), el("td", {}, stateName(x.state)), el("td", {}, when(x.createdAt)))))),
      el("section", { class: "card" }, el("h2", {}, "监管任务"), table(["任务", "流程", "状态", "创建时间"], (p.tasks || []).map((x) => el("tr", {}, el("td", {}, link("#/case/" + caseOfTask(x.instanceId), x.instanceId)), el("td", {}, x.workflow), el("td", {}, stateName(x.state)), el("td", {}, when(x.createdAt)))))),
      el("section", { class: "card" }, el("h2", {}, "未到期期限"), table(["对象", "期限", "到期"], (p.openDeadlines || []).map((x) => el("tr", {}, el("td", {}, x.instanceId), el("td", {}, x.deadline && timerName(x.deadline.name)), el("td", {}, when(x.deadline && x.deadline.due)))))),
      el("section", { class: "card" }, el("h2", {}, "事件"), table(["时间", "对象", "类别", "详情"], (p.events || []).map((x) => el("tr", {}, el("td", {}, when(x.at)), el("td", {}, x.instanceId), el("td", {}, x.kind), el("td", {}, x.detail))))),
      el("section", { class: "card" }, el("h2", {}, "信用记录"), table(["消息", "类型", "状态", "内容"], (p.creditRecords || []).map((m) => el("tr", {}, el("td", {}, m.key), el("td", {}, m.type), el("td", {}, (MESSAGE_STATES[m.state] || [m.state])[0]), el("td", {}, m.text))))),
    );
  } catch (e) {
    out.replaceChildren(errorBox(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Dead letters.

async function deadLettersPage() {
  const message = el("div", { id: "dead-message" });
  const list = el("div", { id: "dead-letters" });
  show(el("h1", {}, "死信"), el("p", { class: "muted" }, "放弃投递的消息。重试后按原键重新投递；同一案件发往该目的地的后续消息在其后依次送出。"), message, list);
  const reply = await api("AdminService", "ListDeadLetters", { limit: 500 });
  const retry = async (key) => {
    try {
      const r = await api("AdminService", "RetryDeadLetter", { key });
      await deadLettersPage();
      document.getElementById("dead-message").replaceChildren(el("p", { class: "notice", role: "status" }, `已重新排队：${r.key} → ${r.destination}`));
    } catch (e) {
      message.replaceChildren(errorBox(e));
    }
  };
  list.replaceChildren(
    table(
      ["消息", "目的地", "案件", "类型", "尝试", "最近错误", "放弃时间", ""],
      (reply.deadLetters || []).map((d) =>
        el("tr", { "data-key": d.message.key },
          el("td", {}, d.message.key),
          el("td", {}, d.destination),
          el("td", {}, link("#/case/" + caseOfTask(d.instanceId), d.instanceId)),
          el("td", {}, d.message.type),
          el("td", { class: "num" }, d.message.attempts),
          el("td", {}, d.message.lastError),
          el("td", {}, new Date(Number(d.deadAtMs)).toLocaleString("zh-CN", { timeZone: "Asia/Shanghai" })),
          el("td", {}, el("button", { class: "retry", onclick: () => retry(d.message.key) }, "重试")),
        ),
      ),
      { id: "dead-table" },
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Catalogs: versions, what changed, and an import with a dry run.

const CATALOG_KINDS = [
  ["regions", "行政区划"], ["departments", "部门"], ["offices", "处室"], ["inspectors", "执法人员"], ["approval_items", "审批事项"], ["handling_items", "办理项"],
  ["supervision_items", "监管事项"], ["supervision_subitems", "监管子项"], ["linkage", "审管关联"], ["commitment", "告知承诺"],
];

async function catalogsPage(params) {
  const kind = params.get("kind") || "departments";
  const picker = select("kind", CATALOG_KINDS.map(([k, t]) => [k, `${t}（${k}）`]), kind);
  picker.addEventListener("change", () => go("/catalogs", { kind: picker.value }));
  const history = el("div", { id: "catalog-history" });
  const importer = el("div", {});
  show(el("h1", {}, "目录"), el("section", { class: "card" }, el("label", {}, "目录：", picker)), history, importer);
  try {
    const reply = await api("AdminService", "CatalogHistory", { kind });
    history.replaceChildren(
      el("section", { class: "card" }, el("h2", {}, "版本"),
        table(["版本", "导入人", "时间", "说明", "行数", "变化"], (reply.versions || []).slice().reverse().map((v) =>
          el("tr", {},
            el("td", { class: "num" }, v.version),
            el("td", {}, v.importedBy),
            el("td", {}, when(v.importedAt)),
            el("td", {}, v.comment),
            el("td", { class: "num" }, v.rows),
            el("td", {},
              (v.added || []).length ? el("div", {}, tag("新增", "ok"), (v.added || []).join("、")) : null,
              (v.removed || []).length ? el("div", {}, tag("删除", "bad"), (v.removed || []).join("、")) : null,
              (v.changed || []).map((c) => el("div", {}, tag("修改", "warn"), c.key, "：", (c.fields || []).map((f) => `${f.field} ${f.oldValue} → ${f.newValue}`).join("；"))),
            ),
          ))),
      ),
    );
  } catch (e) {
    history.replaceChildren(errorBox(e));
  }
  if (!has("region_admin")) return;
  const file = el("input", { type: "file", accept: ".csv,.json", multiple: true });
  const comment = el("input", { placeholder: "导入说明", size: 30 });
  const result = el("div", { id: "import-result" });
  const run = async (dryRun) => {
    const files = [];
    for (const f of file.files) {
      const bytes = new Uint8Array(await f.arrayBuffer());
      let bin = "";
      for (const b of bytes) bin += String.fromCharCode(b);
      files.push({ name: f.name, content: btoa(bin) });
    }
    try {
      const r = await api("AdminService", "ImportCatalogs", { files, comment: comment.value, dryRun });
      result.replaceChildren(el("p", { class: "notice" }, dryRun ? "试导入通过，未保存：" : "已导入："), el("pre", {}, JSON.stringify(r, null, 2)));
    } catch (e) {
      result.replaceChildren(errorBox(e), e.details && e.details.length ? el("pre", {}, JSON.stringify(e.details, null, 2)) : null);
    }
  };
  importer.replaceChildren(
    el("section", { class: "card" }, el("h2", {}, "导入"), el("div", { class: "actions" }, file, comment, el("button", { class: "secondary", onclick: () => run(true) }, "试导入（不保存）"), el("button", { onclick: () => run(false) }, "导入")), result),
  );
}

// ---------------------------------------------------------------------------------------------
// Spot checks (双随机、一公开).

async function spotChecksPage(params) {
  const c = claims() || {};
  const plans = await api("AdminService", "ListSpotCheckPlans", { regionCode: params.get("region") || c.region || "" });
  const runs = el("div", { id: "runs" });
  const open = async (plan) => {
    try {
      const r = await api("AdminService", "ListSpotCheckRuns", { planId: plan.planId });
      runs.replaceChildren(
        el("section", { class: "card" }, el("h2", {}, `${plan.name} 的抽查`),
          table(["批次", "抽取时间", "种子", "抽中对象", "核验"], (r.runs || []).map((run) =>
            el("tr", {},
              el("td", { class: "num" }, run.run),
              el("td", {}, when(run.drawnAt)),
              el("td", {}, run.seed),
              el("td", {}, (run.targets || []).map((t) => el("div", {}, t.applicantName, "（", t.creditCode, "，", t.creditGrade, "）", t.result ? " 结果：" + t.result : ""))),
              el("td", {}, run.verified ? tag("已核验", "ok") : tag("未通过核验", "bad")),
            ))),
        ),
      );
    } catch (e) {
      runs.replaceChildren(errorBox(e));
    }
  };
  show(
    el("h1", {}, "双随机抽查"),
    el("section", { class: "card" },
      table(["计划", "名称", "部门", "处室", "监管事项", "周期", "状态", "已抽", "下次", ""], (plans.plans || []).map((p) =>
        el("tr", {},
          el("td", {}, p.planId), el("td", {}, p.name), el("td", {}, p.department), el("td", {}, p.office), el("td", {}, p.supervisionItem),
          el("td", {}, p.schedule), el("td", {}, p.state), el("td", { class: "num" }, p.drawn), el("td", {}, when(p.nextRun)),
          el("td", {}, el("button", { class: "secondary", onclick: () => open(p) }, "查看抽查")),
        )))),
    runs,
  );
}

// ---------------------------------------------------------------------------------------------
// Calendar status.

async function calendarPage() {
  const s = await api("AdminService", "CalendarStatus", {});
  const STATUS = { official: ["正式", "ok"], provisional: ["暂定", "warn"] };
  show(
    el("h1", {}, "工作日历"),
    el("div", { id: "calendars" },
    (s.warnings || []).length ? el("section", { class: "card" }, (s.warnings || []).map((w) => el("p", { class: "error" }, w))) : null,
    el("section", { class: "card" }, el("p", {}, "缺少正式日历时的策略：", s.policy, "；按暂定日历计时的期限：", s.provisionalTimers || "0")),
    (s.regions || []).map((r) =>
      el("section", { class: "card" }, el("h2", {}, r.region === "national" ? "全国" : `${r.name}（${r.region}）`, " ", tag(`正式日历还剩 ${r.officialDaysLeft} 天`, Number(r.officialDaysLeft) < 60 ? "warn" : "")),
        table(["年份", "状态", "来源", "版本", "导入人", "导入时间"], (r.years || []).map((y) => {
          const [word, kind] = STATUS[y.status] || [y.status, "bad"];
          return el("tr", {}, el("td", {}, y.year), el("td", {}, tag(word, kind)), el("td", {}, y.source), el("td", {}, y.version), el("td", {}, y.loadedBy), el("td", {}, when(y.loadedAt)));
        })))),
    (s.replans || []).length ? el("section", { class: "card" }, el("h2", {}, "重新计算"), table(["批次", "日历", "变动范围", "已重算", "完成"], s.replans.map((r) => el("tr", {}, el("td", {}, r.generation), el("td", {}, r.calendar), el("td", {}, `${r.changedFrom} — ${r.changedTo}`), el("td", {}, r.instancesReplanned), el("td", {}, r.done ? "是" : "否"))))) : null,
    ),
  );
}

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", render);
