// irvs_ros teleop page: polls GET /state (~10 Hz), shows the newest camera frame, draws the workspace (top view,
// +x up = away from the base, +y left) and sends the operator's input through the node's JSON API:
// POST /target {x, y} while dragging, POST /action/<name> for keys, POST /episode/<name> for the buttons.
"use strict";

(function () {
  const MARGIN = 24;          // px around the workspace box
  const WIDTH = 560;          // px of the canvas (the box's y extent fills it)
  const POLL_MS = 100;

  const canvas = document.getElementById("workspace");
  const ctx = canvas.getContext("2d");
  const camera = document.getElementById("camera");
  const view = {
    config: null, state: null, pxPerM: 1, drag: null, localTarget: null,
    imageSeq: -1, imageLoading: false, targetInFlight: false, targetQueued: null,
  };
  window.teleop = view;  // for debugging and the browser tests

  // ------------------------------------------------------------------ geometry
  function toCanvas(x, y) {
    const e = view.config.envelope;
    return [MARGIN + (e.y_max - y) * view.pxPerM, MARGIN + (e.x_max - x) * view.pxPerM];
  }
  function toWorld(cx, cy) {
    const e = view.config.envelope;
    return [e.x_max - (cy - MARGIN) / view.pxPerM, e.y_max - (cx - MARGIN) / view.pxPerM];
  }
  view.toCanvas = toCanvas;
  view.toWorld = toWorld;

  function canvasPoint(ev) {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
  }

  // ------------------------------------------------------------------ API
  async function post(path, body) {
    const res = await fetch(path, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await res.json(); } catch (e) { data = {error: `bad answer (${res.status})`}; }
    return {status: res.status, data: data};
  }

  function showMessage(text, ok) {
    const el = document.getElementById("message");
    el.textContent = text;
    el.className = "message " + (ok ? "ok" : "error");
  }

  async function runAction(prefix, name) {
    try {
      const {status, data} = await post(`${prefix}/${name}`);
      if (data.error) {
        showMessage(`${name}: ${data.error}`, false);
      } else {
        showMessage(`${name}: ${data.message}`, data.ok && status === 200);
      }
    } catch (e) {
      showMessage(`${name}: teleop_node is not reachable (${e})`, false);
    }
  }

  // Target updates while dragging: at most one request in flight, the newest one queued.
  async function sendTarget(xy) {
    if (view.targetInFlight) {
      view.targetQueued = xy;
      return;
    }
    view.targetInFlight = true;
    try {
      const {data} = await post("/target", {x: xy[0], y: xy[1]});
      if (data.error) showMessage(`target: ${data.error}`, false);
    } catch (e) {
      showMessage(`target: teleop_node is not reachable (${e})`, false);
    } finally {
      view.targetInFlight = false;
      if (view.targetQueued) {
        const next = view.targetQueued;
        view.targetQueued = null;
        sendTarget(next);
      }
    }
  }

  // ------------------------------------------------------------------ drawing
  function layout() {
    const e = view.config.envelope;
    view.pxPerM = (WIDTH - 2 * MARGIN) / (e.y_max - e.y_min);
    canvas.width = WIDTH;
    canvas.height = Math.round((e.x_max - e.x_min) * view.pxPerM + 2 * MARGIN);
  }

  function marker(xy, draw) {
    if (!xy) return;
    const [cx, cy] = toCanvas(xy[0], xy[1]);
    ctx.save();
    draw(cx, cy);
    ctx.restore();
  }

  function draw() {
    if (!view.config) return;
    const e = view.config.envelope;
    const s = view.state || {};
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const [bx0, by0] = toCanvas(e.x_max, e.y_max);
    const [bx1, by1] = toCanvas(e.x_min, e.y_min);
    // Allowed region: the box intersected with the reach annulus around the base (0, 0).
    const [ox, oy] = toCanvas(0, 0);
    ctx.save();
    ctx.beginPath();
    ctx.rect(bx0, by0, bx1 - bx0, by1 - by0);
    ctx.clip();
    ctx.beginPath();
    ctx.arc(ox, oy, e.max_reach * view.pxPerM, 0, 2 * Math.PI, false);
    ctx.arc(ox, oy, e.min_reach * view.pxPerM, 0, 2 * Math.PI, true);
    ctx.fillStyle = "#e3f2fd";
    ctx.fill("evenodd");
    ctx.restore();
    // Grid every 0.1 m.
    ctx.strokeStyle = "#e0e0e0";
    ctx.fillStyle = "#9e9e9e";
    ctx.font = "10px sans-serif";
    ctx.lineWidth = 1;
    for (let x = Math.ceil(e.x_min * 10) / 10; x <= e.x_max + 1e-9; x += 0.1) {
      const [, cy] = toCanvas(x, 0);
      ctx.beginPath(); ctx.moveTo(bx0, cy); ctx.lineTo(bx1, cy); ctx.stroke();
      ctx.fillText(`x ${x.toFixed(1)}`, 2, cy + 3);
    }
    for (let i = Math.ceil(e.y_min * 10); i <= Math.floor(e.y_max * 10 + 1e-6); i++) {
      const [cx] = toCanvas(0, i / 10);
      ctx.beginPath(); ctx.moveTo(cx, by0); ctx.lineTo(cx, by1); ctx.stroke();
      if (i % 2 === 0) ctx.fillText(`y ${(i / 10).toFixed(1)}`, cx - 10, by0 - 6);
    }
    ctx.strokeStyle = "#455a64";
    ctx.lineWidth = 2;
    ctx.strokeRect(bx0, by0, bx1 - bx0, by1 - by0);
    ctx.fillStyle = "#455a64";
    ctx.fillText("base ↓", (bx0 + bx1) / 2 - 15, canvas.height - 6);

    const target = view.drag ? view.localTarget : s.target;
    marker(s.ee_pose, (cx, cy) => {
      ctx.strokeStyle = "#43a047"; ctx.lineWidth = 3;
      ctx.beginPath(); ctx.arc(cx, cy, 10, 0, 2 * Math.PI); ctx.stroke();
    });
    marker(s.setpoint, (cx, cy) => {
      ctx.fillStyle = "#1e88e5";
      ctx.beginPath(); ctx.arc(cx, cy, 6, 0, 2 * Math.PI); ctx.fill();
    });
    marker(target, (cx, cy) => {
      ctx.strokeStyle = "#e53935"; ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.moveTo(cx - 12, cy); ctx.lineTo(cx + 12, cy); ctx.moveTo(cx, cy - 12); ctx.lineTo(cx, cy + 12);
      ctx.stroke();
    });
  }

  // ------------------------------------------------------------------ state polling
  function fmt(xy) {
    return xy ? `(${xy[0].toFixed(3)}, ${xy[1].toFixed(3)})` : "—";
  }

  function render() {
    const s = view.state;
    const status = document.getElementById("status");
    if (!s) return;
    if (s.holding) {
      status.textContent = `holding: ${s.holding}`;
      status.className = "status warn";
    } else {
      status.textContent = `publishing setpoints (${s.published})`;
      status.className = "status ok";
    }
    document.getElementById("positions").textContent =
      `target ${fmt(s.target)}  setpoint ${fmt(s.setpoint)}  effector ${fmt(s.ee_pose)} m`;
    const ep = s.episode;
    document.getElementById("episode-counter").textContent = ep ? String(ep.episodes_finished || 0) : "0";
    const info = document.getElementById("episode");
    if (!ep) {
      info.textContent = "no episode information from the recorder yet";
    } else if (ep.recording) {
      info.textContent = `recording ${ep.name} (${ep.outcome || "unlabeled"})`;
    } else if (ep.name) {
      info.textContent = `idle; last episode ${ep.name}: ${ep.outcome || "unlabeled"}`;
    } else {
      info.textContent = "idle";
    }
    document.getElementById("btn-start").classList.toggle("active", !!(ep && ep.recording));
    for (const button of document.querySelectorAll("button[data-action]")) {
      const action = button.dataset.action;
      const up = !s.services || s.services[action] === true;
      button.classList.toggle("unavailable", !up);
      button.title = up ? "" : `the service for ${action} is not available`;
    }
    if (s.image) {
      document.getElementById("camera-info").textContent =
        `${s.image.width}×${s.image.height}, frame ${s.image.seq}, stamp ${s.image.stamp.toFixed(2)} s`;
      if (s.image.seq !== view.imageSeq && !view.imageLoading) loadFrame();
    }
    draw();
  }

  // The newest frame is decoded off screen and then drawn in one go: the view never flickers or shows half a frame.
  async function loadFrame() {
    view.imageLoading = true;
    try {
      const res = await fetch("/camera.png");
      if (!res.ok) return;
      const seq = Number(res.headers.get("X-Frame-Seq"));
      const bitmap = await createImageBitmap(await res.blob());
      if (camera.width !== bitmap.width || camera.height !== bitmap.height) {
        camera.width = bitmap.width;
        camera.height = bitmap.height;
      }
      camera.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      view.imageSeq = seq;
      camera.dataset.seq = String(seq);
    } catch (e) {
      // A frame lost in transit: the next poll asks again.
    } finally {
      view.imageLoading = false;
    }
  }

  async function poll() {
    try {
      const res = await fetch("/state");
      view.state = await res.json();
      render();
    } catch (e) {
      const status = document.getElementById("status");
      status.textContent = "teleop_node is not reachable";
      status.className = "status warn";
    }
    setTimeout(poll, POLL_MS);
  }

  // ------------------------------------------------------------------ input
  canvas.addEventListener("pointerdown", (ev) => {
    const s = view.state;
    if (!s || !s.target) {
      showMessage("no target to move yet: waiting for the effector pose", false);
      return;
    }
    canvas.setPointerCapture(ev.pointerId);
    canvas.classList.add("dragging");
    canvas.focus();
    view.drag = {start: canvasPoint(ev), target: s.target.slice()};
    view.localTarget = s.target.slice();
    ev.preventDefault();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!view.drag) return;
    const [cx, cy] = canvasPoint(ev);
    const [sx, sy] = view.drag.start;
    // A drag moves the target by the pointer's displacement: a click alone never makes the arm jump.
    const xy = [view.drag.target[0] - (cy - sy) / view.pxPerM, view.drag.target[1] - (cx - sx) / view.pxPerM];
    view.localTarget = xy;
    sendTarget(xy);
    draw();
  });
  function endDrag(ev) {
    if (!view.drag) return;
    canvas.releasePointerCapture(ev.pointerId);
    canvas.classList.remove("dragging");
    view.drag = null;
    draw();
  }
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);

  document.addEventListener("keydown", (ev) => {
    if (!view.config || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    const action = view.config.keys[key];
    if (!action) return;
    ev.preventDefault();  // no page scrolling on arrows / space, no button click on space
    runAction("/action", action);
  });

  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", (ev) => {
      ev.preventDefault();
      button.blur();  // keep space for start / stop, not for "click the focused button again"
      runAction("/episode", button.dataset.action);
    });
  }

  // ------------------------------------------------------------------ start
  async function start() {
    try {
      const res = await fetch("/config");
      view.config = await res.json();
    } catch (e) {
      document.getElementById("status").textContent = "teleop_node is not reachable";
      setTimeout(start, 1000);
      return;
    }
    layout();
    draw();
    poll();
  }
  start();
})();
