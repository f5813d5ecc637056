// Live updates: the page follows the event stream (/ui/events) and, on each event,
// fetches itself again and swaps its live region with htmx. EventSource reconnects by
// itself after a lost connection and sends Last-Event-ID, so nothing is missed.
(function () {
  "use strict";
  var url = document.body.dataset.live;
  if (!url) return;
  var status = document.getElementById("live-status");
  var pause = document.getElementById("live-pause");
  var feed = document.getElementById("feed");
  var taskId = (location.pathname.match(/^\/tasks\/([^/]+)$/) || [])[1];
  var source = null;
  var lastId = document.body.dataset.cursor || null;
  var busy = false;
  var again = false;
  var wholePage = false;

  function show(text) { if (status) { status.textContent = text; status.dataset.state = text; } }

  function refresh() {
    if (!document.getElementById("live") || typeof htmx === "undefined") return;
    if (busy) { again = true; return; }
    busy = true;
    // A change of the task shown can bring other forms (answer, review): swap the page.
    var target = wholePage ? "main" : "#live";
    wholePage = false;
    htmx.ajax("GET", location.pathname + location.search,
              { target: target, select: target, swap: "outerHTML" })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function addToFeed(e) {
    if (!feed) return;
    var li = document.createElement("li");
    var code = document.createElement("code");
    code.textContent = e.id;
    var b = document.createElement("b");
    b.textContent = " " + e.type + " ";
    li.appendChild(code);
    li.appendChild(b);
    if (e.task_id) {
      var a = document.createElement("a");
      a.href = "/tasks/" + encodeURIComponent(e.task_id);
      a.textContent = e.task_id;
      li.appendChild(a);
    }
    if (e.agent_id) li.appendChild(document.createTextNode(" · " + e.agent_id));
    var time = document.createElement("time");
    time.textContent = " " + e.created_at;
    li.appendChild(time);
    feed.insertBefore(li, feed.firstChild);
    while (feed.children.length > 50) feed.removeChild(feed.lastChild);
  }

  function open() {
    var u = lastId ? url + "?after=" + encodeURIComponent(lastId) : url;
    source = new EventSource(u);
    source.onopen = function () { show("live"); };
    source.onerror = function () { show("reconnecting"); };
    source.addEventListener("dispatchd", function (msg) {
      lastId = msg.lastEventId || lastId;
      var e;
      try { e = JSON.parse(msg.data); } catch (err) { return; }
      addToFeed(e);
      if (taskId && e.task_id === taskId) wholePage = true;
      refresh();
    });
  }

  function close() { if (source) { source.close(); source = null; } }

  if (pause) {
    pause.addEventListener("change", function () {
      if (pause.checked) { close(); show("paused"); }
      else { open(); refresh(); }
    });
  }
  open();
})();
