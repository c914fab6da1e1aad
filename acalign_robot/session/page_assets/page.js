// The operator page: renders the state the supervisor streams (/events) and sends e-stop / clear (/api/...).
// Plain JS, no library: the page must work with nothing but the files the package ships.
"use strict";

const token = document.querySelector('meta[name="acalign-token"]').content;
// A page served with a token file is opened as ?token=...; every request it makes passes the token on.
const pageToken = new URLSearchParams(location.search).get("token");
const suffix = pageToken ? "?token=" + encodeURIComponent(pageToken) : "";
const STALE_AFTER_S = 3; // the supervisor sends once a second: three missed updates mean the feed is gone
let lastUpdate = 0;

const $ = (root, field) => root.querySelector(`[data-field="${field}"]`);
const fmt = (value, digits = 2) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const versionColour = (version) => `hsl(${(version * 137.508) % 360}, 70%, 40%)`;

function connect() {
  const source = new EventSource("/events" + suffix);
  source.onmessage = (event) => {
    lastUpdate = Date.now();
    render(JSON.parse(event.data));
  };
  // EventSource reconnects by itself; the connection line below says how old the data is meanwhile.
}

function showConnection() {
  const element = document.getElementById("connection");
  const age = (Date.now() - lastUpdate) / 1000;
  const live = lastUpdate > 0 && age < STALE_AFTER_S;
  element.textContent = live ? "live" : lastUpdate ? `NO UPDATE for ${age.toFixed(0)} s` : "connecting…";
  element.className = live ? "good" : "bad";
}

function render(state) {
  if (!state.robots) return; // the first state is not collected yet
  document.getElementById("session").textContent = state.session;
  document.getElementById("elapsed").textContent = `${fmt(state.elapsed_s, 0)} s`;
  for (const robot of state.robots) renderRobot(robot);
  renderLearner(state.learner);
  const events = document.getElementById("events");
  events.replaceChildren(
    ...state.events.map((event) => {
      const item = document.createElement("li");
      item.textContent = `${fmt(event.t_s, 1)} s ${event.event} ${event.process} ${event.detail}`;
      return item;
    }),
  );
}

function robotCard(name) {
  let card = document.querySelector(`article[data-robot="${CSS.escape(name)}"]`);
  if (card) return card;
  card = document.getElementById("robot-card").content.firstElementChild.cloneNode(true);
  card.dataset.robot = name;
  $(card, "name").textContent = name;
  card.querySelector('[data-action="estop"]').addEventListener("click", () => act("estop", name));
  card.querySelector('[data-action="clear"]').addEventListener("click", () => confirmClear(name));
  document.getElementById("robots").append(card);
  return card;
}

function renderRobot(robot) {
  const card = robotCard(robot.name);
  const driver = robot.driver;
  const badge = $(card, "safety");
  let label = "RUNNING";
  let kind = "ok";
  if (driver && driver.estopped) [label, kind] = ["E-STOP", "safe"];
  else if (robot.safe) [label, kind] = ["SAFE", "safe"];
  else if (robot.state !== "running") [label, kind] = [robot.state.toUpperCase(), "warn"];
  if (robot.stale) [label, kind] = [label + " · STALE", "warn"];
  badge.textContent = label;
  badge.className = "badge " + kind;
  card.dataset.safety = label;
  $(card, "safe_reason").textContent = robot.safe ? `SAFE latched: ${robot.safe_reason}` : "";
  $(card, "version").textContent = robot.policy_version === null ? "–" : `v${robot.policy_version}`;
  $(card, "swaps").textContent = `${robot.swaps} / ${robot.rollbacks}`;
  $(card, "episodes").textContent = robot.episode_count;
  $(card, "last_return").textContent = fmt(robot.last_return, 1);
  $(card, "latency").textContent = `${fmt(robot.tick_p50_ms)} / ${fmt(robot.tick_p99_ms)} ms`;
  $(card, "deadline_misses").textContent = robot.deadline_misses;
  $(card, "rate").textContent = `${fmt(robot.rate_hz, 0)} Hz`;
  $(card, "estops").textContent = driver ? `${driver.estops} / ${driver.clears}` : "no answer";
  $(card, "watchdog").textContent = driver
    ? `${driver.watchdog_events}` + (driver.last_watchdog_latency_ms ? ` (last ${fmt(driver.last_watchdog_latency_ms, 0)} ms)` : "")
    : "no answer";
  plotReturns(card.querySelector('[data-plot="returns"]'), robot.episodes);
  const versions = [...new Set(robot.episodes.map((episode) => episode[2]))];
  $(card, "legend").replaceChildren(
    ...versions.map((version) => {
      const entry = document.createElement("span");
      const dot = document.createElement("i");
      dot.style.background = versionColour(version);
      entry.append(dot, `v${version}`);
      return entry;
    }),
  );
}

function renderLearner(learner) {
  const card = document.getElementById("learner");
  card.hidden = !learner;
  if (!learner) return;
  const badge = $(card, "state");
  badge.textContent = (learner.learner_state || learner.state) + (learner.stale ? " · STALE" : "");
  badge.className = "badge " + (learner.stale || learner.state !== "running" ? "warn" : "ok");
  $(card, "updates_per_s").textContent = fmt(learner.updates_per_s, 0);
  $(card, "owed_updates").textContent = learner.owed_updates;
  $(card, "critic_loss").textContent = fmt(learner.critic_loss, 3);
  $(card, "alpha").textContent = fmt(learner.alpha, 4);
  $(card, "w").textContent = fmt(learner.w, 3);
  $(card, "buffer_size").textContent = learner.buffer_size;
  $(card, "published_version").textContent = learner.published_version === null ? "–" : `v${learner.published_version}`;
  $(card, "updates").textContent = learner.updates;
  const points = learner.critic_losses.map(([t, loss]) => [t, loss, null]);
  plot(card.querySelector('[data-plot="critic"]'), points, "critic loss over session time (s)");
}

function plotReturns(canvas, episodes) {
  plot(canvas, episodes, "episode return by episode, coloured by policy version");
}

// A scatter plot of [x, y, version] points with its y range labelled; version null: one colour, joined by lines.
function plot(canvas, points, caption) {
  const context = canvas.getContext("2d");
  const [width, height, left, bottom] = [canvas.width, canvas.height, 48, 18];
  context.clearRect(0, 0, width, height);
  context.font = "11px system-ui, sans-serif";
  context.fillStyle = "#667085";
  context.fillText(caption, left, 12);
  const finite = points.filter((point) => point[1] !== null);
  if (!finite.length) {
    context.fillText("waiting for data", left, height / 2);
    return;
  }
  const xs = finite.map((point) => point[0]);
  const ys = finite.map((point) => point[1]);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  if (yMax === yMin) [yMin, yMax] = [yMin - 1, yMax + 1];
  const x = (value) => left + ((value - xMin) / Math.max(1e-9, xMax - xMin)) * (width - left - 8);
  const y = (value) => 24 + (1 - (value - yMin) / (yMax - yMin)) * (height - bottom - 28);
  context.strokeStyle = "#d0d5dd";
  context.beginPath();
  context.moveTo(left, 24);
  context.lineTo(left, height - bottom);
  context.lineTo(width - 8, height - bottom);
  context.stroke();
  context.fillText(yMax.toPrecision(4), 2, y(yMax) + 4);
  context.fillText(yMin.toPrecision(4), 2, y(yMin));
  context.fillText(String(xMin), left, height - 4);
  context.fillText(String(xMax), width - 8 - context.measureText(String(xMax)).width, height - 4);
  if (finite[0][2] === null) {
    context.strokeStyle = "#3b5bdb";
    context.beginPath();
    finite.forEach(([px, py], index) => (index ? context.lineTo(x(px), y(py)) : context.moveTo(x(px), y(py))));
    context.stroke();
    return;
  }
  for (const [px, py, version] of finite) {
    context.fillStyle = versionColour(version);
    context.beginPath();
    context.arc(x(px), y(py), 2.5, 0, 2 * Math.PI);
    context.fill();
  }
}

async function act(action, robot) {
  const result = document.getElementById("action-result");
  const started = performance.now();
  try {
    const response = await fetch("/api/" + action + suffix, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Acalign-Token": token },
      body: JSON.stringify({ robot }),
    });
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    const answer = await response.json();
    const lines = answer.answers.map((a) =>
      a.acknowledged
        ? `${a.robot}: ${action} acknowledged in ${(1000 * a.elapsed_s).toFixed(1)} ms (${a.detail})`
        : `${a.robot}: ${action} NOT acknowledged: ${a.detail}` +
          (action === "estop" ? " — use the robot's hardware e-stop" : ""),
    );
    lines.push(`(${(performance.now() - started).toFixed(0)} ms from the click to this answer)`);
    result.textContent = lines.join("\n");
    result.className = "result" + (answer.ok ? "" : " failed");
    result.dataset.action = action;
    result.dataset.ok = String(answer.ok);
  } catch (error) {
    result.textContent = `${action} FAILED: ${error.message}` + (action === "estop" ? " — use the robot's hardware e-stop" : "");
    result.className = "result failed";
    result.dataset.action = action;
    result.dataset.ok = "false";
  }
  result.hidden = false;
}

function confirmClear(robot) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent =
    robot === null ? "Clear every robot of this session?" : `Clear ${robot}?`;
  dialog.onclose = () => {
    if (dialog.returnValue === "yes") act("clear", robot);
  };
  dialog.returnValue = "";
  dialog.showModal();
}

document.getElementById("estop-all").addEventListener("click", () => act("estop", null));
document.getElementById("clear-all").addEventListener("click", () => confirmClear(null));
setInterval(showConnection, 500);
connect();
